"""Issue 19, data preparation and MindRecords: a user's files beside the shards, record fields that
become paths, split names, workers of a killed build, unreadable source entries, a manifest that
declares more rows than the shards hold, a zeroed shard index, a damaged state file."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from mindrecords.manifest import MindRecordError, read_manifest, split_shard_files
from mindrecords.schema import MANIFEST, check_path_field
from mindrecords.verify import verify_output
from prep.build import build
from prep.errors import PrepError
from prep.sample import make_sample
from peak import cli_peak as measured

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    make_sample(root, n_train=4, n_val=0, height=48, width=96, seed=3)
    return root


@pytest.fixture(scope="module")
def built_once(tmp_path_factory, pristine):
    out = tmp_path_factory.mktemp("built") / "out"
    build(pristine, out, ["train"], workers=1, shard_size=2, echo=lambda *_: None)
    return out


@pytest.fixture
def root(tmp_path, pristine):
    shutil.copytree(pristine, tmp_path / "cs", symlinks=True)
    return tmp_path / "cs"


@pytest.fixture
def out(tmp_path, built_once):
    shutil.copytree(built_once, tmp_path / "out")
    return tmp_path / "out"


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


def build_cli(root, out, *extra):
    return run("build-mindrecord", "--root", root, "--out", out, "--splits", "train", "--shard-size", 2,
               "--workers", 1, *extra)


def config_file(tmp_path: Path) -> Path:
    from settings.files import save_config
    from settings.schema import Config

    cfg = Config()
    cfg.train.batch_size = 1
    save_config(cfg, tmp_path / "cfg.yaml")
    return tmp_path / "cfg.yaml"


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def peak_kib(args: list) -> tuple[int, str, int]:
    """(exit code, output and errors, peak RSS in KiB) of `cli.py ARGS` run in a child process."""
    code, out, err, peak = measured(*args)
    return code, out + err, peak


# -- 1. a user's files in the split folder -------------------------------------------------------

def test_reruns_leave_a_users_files_in_the_split_folder_alone(root, tmp_path):
    out = tmp_path / "out"
    assert build_cli(root, out).exit_code == 0
    split = out / "train"
    mine = {split / "train.mindrecord000.bak": b"backup", split / "train.mindrecord_notes.txt": b"notes",
            split / "train.mindrecord007.db.old": b"old"}
    for path, data in mine.items():
        path.write_bytes(data)
    r = build_cli(root, out)
    assert r.exit_code == 0 and "up to date" in r.output, r.output + r.stderr
    r = build_cli(root, out, "--shard-size", 1)  # four shards: none of the user's names is one
    assert r.exit_code == 0, r.stderr
    r = build_cli(root, out, "--shard-size", 4)  # one shard: three of ours become strays, deleted
    assert r.exit_code == 0, r.stderr
    assert {p: p.read_bytes() for p in mine} == mine
    assert sorted(p.name for p in split.glob("train.mindrecord0??")) == ["train.mindrecord000"]
    assert sorted(p.name for p in (split / ".state").iterdir()) == ["train.mindrecord000.json"]
    v = run("verify", out)  # the user's files are noted, not problems
    assert v.exit_code == 0 and "0 problems" in v.output, v.output
    assert f"note: {split / 'train.mindrecord_notes.txt'}: not written by build-mindrecord" in v.output


def test_a_stray_shard_changed_since_it_was_written_is_left_alone(root, tmp_path):
    out = tmp_path / "out"
    assert build_cli(root, out).exit_code == 0
    stray = out / "train" / "train.mindrecord001"
    stray.write_bytes(b"the user's own data now")
    assert build_cli(root, out, "--shard-size", 4).exit_code == 0
    assert stray.read_bytes() == b"the user's own data now"
    v = run("verify", out)
    assert v.exit_code == 2 and f"{stray}: shard not listed in the manifest" in v.output


def test_a_file_in_the_way_of_a_planned_shard_is_refused_before_any_work(root, tmp_path):
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    theirs = out / "train" / "train.mindrecord001.db"
    theirs.write_bytes(b"not ours")
    r = build_cli(root, out)
    assert r.exit_code == 2 and f"error: {theirs}: exists and was not written by build-mindrecord" in r.stderr
    assert files(out / "train") == {"train.mindrecord001.db": b"not ours"}
    theirs.unlink()
    (out / "train" / "summary.json").write_text("{}")
    r = build_cli(root, out)
    assert r.exit_code == 2 and "summary.json: exists and was not written by build-mindrecord" in r.stderr


# -- 2. record fields that become paths ----------------------------------------------------------

@pytest.mark.parametrize("value, ok", [
    ("aachen", True), ("a/b/c", True), ("aachen_000000_000019", True),
    ("../../../../tmp/x", False), ("/tmp/x", False), ("", True), ("a//b", False), ("a/./b", False),
    ("a/", False), ("a\\b", False), ("a\x00b", False), ("a\nb", False), ("x" * 256, False), (7, False),
])
def test_check_path_field(value, ok):
    if ok:
        check_path_field("city", value, "here")
    else:
        with pytest.raises(ValueError, match=r"^here: city "):
            check_path_field("city", value, "here")


def _rewrite_shard_city(split_dir: Path, name: str, city: str) -> None:
    """Rewrite shard `name` with the project's writer, every record's city set to `city`."""
    from mindspore.mindrecord import FileReader

    from mindrecords.writer import commit_shard, write_shard

    reader = FileReader(str(split_dir / name), num_consumer=1)
    records = [{**rec, "city": city} for rec in reader.get_next()]
    reader.close()
    staged = split_dir.parent / "crafted"
    write_shard(staged, name, records)
    commit_shard(staged, split_dir, name)


def _rewrite_manifest(split_dir: Path, column: str, value) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(split_dir / MANIFEST)
    i = table.column_names.index(column)
    table = table.set_column(i, column, pa.array([value] * table.num_rows, table.schema.field(column).type))
    pq.write_table(table, split_dir / MANIFEST)


def test_a_record_whose_city_escapes_is_refused_by_verify_and_every_reader(out):
    import mindspore.dataset as ds

    from mindrecords.reader import read_batches

    split = out / "train"
    _rewrite_shard_city(split, "train.mindrecord000", "../../../../tmp/x")
    (report,) = verify_output(out)
    assert any(path == str(split / "train.mindrecord000") and "city '../../../../tmp/x' has the path part '..'" in m
               for path, m in report.problems), report.problems
    data = ds.MindDataset(split_shard_files(out, "train"), columns_list=["id", "city"], shuffle=False)
    with pytest.raises(MindRecordError, match=r"train\.mindrecord000: damaged shard .*city '\.\./"):
        list(read_batches(data, out, "train", "eval train", output_numpy=True, as_dict=True, in_manifest_order=True))
    _rewrite_manifest(split, "city", "../../../../tmp/x")  # the manifest agrees: refused before any reading
    with pytest.raises(MindRecordError, match=r"manifest.parquet: damaged manifest: column city: city '\.\./"):
        split_shard_files(out, "train")
    v = run("verify", out)
    assert v.exit_code == 2 and "city '../../../../tmp/x'" in v.output


@pytest.mark.parametrize("column, value", [("id", "/etc/passwd"), ("shard", "../train.mindrecord000"),
                                           ("shard", "other.mindrecord000")])
def test_a_manifest_naming_an_unsafe_path_is_refused(out, tmp_path, column, value):
    _rewrite_manifest(out / "train", column, value)
    with pytest.raises(MindRecordError, match=rf"manifest.parquet: damaged manifest: column {column}"):
        read_manifest(out, "train")
    r = run("inspect-pipeline", "--config", config_file(tmp_path), "--data", out, "--list-ids")
    assert r.exit_code == 2 and "damaged manifest" in r.stderr and "Traceback" not in r.stderr


# -- 3. split names ------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train/", "../train", "tr ain", "."])
def test_a_split_that_is_not_a_plain_name_is_refused_everywhere(root, tmp_path, out, split):
    new = tmp_path / "new"
    r = run("build-mindrecord", "--root", root, "--out", new, "--splits", split)
    assert r.exit_code == 2 and "not a plain name" in r.stderr and not new.exists()
    with pytest.raises(PrepError, match="not a plain name"):
        build(root, new, [split], echo=lambda *_: None)
    assert not new.exists()
    r = run("verify", out, "--splits", split)
    assert r.exit_code == 2 and "not a plain name" in r.stderr
    r = run("eval", "--checkpoint", tmp_path / "none.ckpt", "--data", out, "--split", split)
    assert r.exit_code == 2 and "not a plain name" in r.stderr
    with pytest.raises(MindRecordError, match="not a plain name"):
        split_shard_files(out, split)


# -- 4. workers end with the build ---------------------------------------------------------------

def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_workers_end_with_a_killed_build_and_the_rerun_cleans_up(tmp_path, how):
    src = tmp_path / "cs"
    make_sample(src, n_train=12, n_val=0, height=128, width=256, seed=5)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "cli.py"), "build-mindrecord", "--root", str(src), "--out", str(out),
           "--splits", "train", "--workers", "2", "--shard-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: set = set()
    try:
        deadline = time.time() + 120
        staged = out / "train" / ".staging"
        while time.time() < deadline and len(list(staged.glob("train.mindrecord*"))) < 2:
            time.sleep(0.05)
        assert proc.poll() is None, "the build finished before it could be killed"
        workers = {pid for pid in _children(proc.pid) if _alive(pid)}
        assert len(workers) >= 2
        os.kill(proc.pid, how)  # the build only: its workers must notice
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert not [p for p in workers if _alive(p)], "workers outlived the build"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (r,) = build(src, out, ["train"], workers=2, shard_size=1, echo=lambda *_: None)
    assert r.samples == 12 and verify_output(out)[0].problems == []
    assert list((out / "train" / ".staging").iterdir()) == []


# -- 5. source entries that cannot be read -------------------------------------------------------

def test_a_symlink_loop_or_broken_link_in_the_sources_is_named_as_such(root, tmp_path):
    city = next((root / "leftImg8bit" / "train").iterdir())
    loop = city / "loop_000000_000019_leftImg8bit.png"
    os.symlink(loop.name, loop)
    r = build_cli(root, tmp_path / "out")
    assert r.exit_code == 2 and f"error: {loop}: symlink loop" in r.stderr and "Cityscapes names" not in r.stderr
    loop.unlink()
    os.symlink("gone.png", loop)
    r = build_cli(root, tmp_path / "out")
    assert r.exit_code == 2 and f"error: {loop}: broken symlink" in r.stderr
    loop.unlink()
    split_loop = root / "leftImg8bit" / "val"
    os.symlink("val", split_loop)
    with pytest.raises(PrepError, match=rf"^{split_loop}: symlink loop$"):
        build(root, tmp_path / "out", ["val"], echo=lambda *_: None)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_an_unreadable_city_folder_is_named(root, tmp_path):
    city = next((root / "gtFine" / "train").iterdir())
    city.chmod(0)
    try:
        r = build_cli(root, tmp_path / "out")
    finally:
        city.chmod(0o755)
    assert r.exit_code == 2 and f"error: {city}: cannot list the folder (Permission denied)" in r.stderr


# -- 6. a manifest declaring more rows than the shards hold --------------------------------------

def _huge_manifest(path: Path, rows: int) -> None:
    """A small parquet declaring `rows` rows: dictionary columns of one repeated value."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    zeros = pa.array(np.zeros(rows, np.int32))
    table = pa.table({name: pa.DictionaryArray.from_arrays(zeros, pa.array([value]))
                      for name, value in (("id", "aachen_000000_000019"), ("city", "aachen"),
                                          ("shard", "train.mindrecord000"))})
    pq.write_table(table, path, row_group_size=1 << 22)


def test_a_manifest_declaring_millions_of_rows_is_refused_in_bounded_memory(out):
    manifest = out / "train" / MANIFEST
    _huge_manifest(manifest, 20_000_000)
    assert manifest.stat().st_size < 4_000_000
    with pytest.raises(MindRecordError, match=r"declares 20000000 rows, but the shard indexes .* hold 4 records"):
        split_shard_files(out, "train")
    baseline = peak_kib(["verify", out / "none"])[2]
    code, stderr, kib = peak_kib(["verify", out])
    assert code == 2 and "declares 20000000 rows" in stderr and "Traceback" not in stderr, stderr
    assert kib < 1024 * 1024 and kib - baseline < 200 * 1024, (kib, baseline)


def test_a_manifest_whose_strings_unpack_to_gigabytes_is_refused(out):
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = out / "train" / MANIFEST
    table = pq.read_table(manifest)
    long = pa.array(["a" * 5_000_000] * table.num_rows)
    pq.write_table(table.set_column(table.column_names.index("city"), "city", long), manifest, compression="zstd")
    assert manifest.stat().st_size < 100_000
    with pytest.raises(MindRecordError, match="damaged manifest"):
        read_manifest(out, "train")


# -- 7. a zeroed shard index ---------------------------------------------------------------------

def test_a_zeroed_index_is_named_by_every_reader(out, tmp_path):
    from pipelines.train_pipeline import train_dataset
    from settings.files import load_config

    db = out / "train" / "train.mindrecord001.db"
    db.write_bytes(bytes(db.stat().st_size))
    with pytest.raises(MindRecordError, match=rf"^{db}: damaged shard index \(file is not a database\)"):
        split_shard_files(out, "train")
    config = config_file(tmp_path)
    with pytest.raises(MindRecordError, match=rf"^{db}: damaged shard index"):
        train_dataset(load_config(config), out)
    r = run("inspect-pipeline", "--config", config, "--data", out, "--out", tmp_path / "look", "--n", 1)
    assert r.exit_code == 2 and f"error: {db}: damaged shard index" in r.stderr, r.stderr
    (report,) = verify_output(out)
    assert any(path == str(out / "train" / "train.mindrecord001") for path, _ in report.problems)


def test_an_index_of_another_shard_or_count_is_named(out):
    split = out / "train"
    shutil.copyfile(split / "train.mindrecord000.db", split / "train.mindrecord001.db")
    with pytest.raises(MindRecordError, match=r"train.mindrecord001.db: damaged shard index: it names the shard"):
        split_shard_files(out, "train")


# -- 8. a damaged state file ---------------------------------------------------------------------

@pytest.mark.parametrize("damage", [[], "text", 7, {"name": "train.mindrecord000"},
                                    "samples-not-a-list", "sample-field-of-wrong-type"])
def test_a_damaged_state_rebuilds_its_shard(root, tmp_path, damage):
    out = tmp_path / "out"
    assert build_cli(root, out).exit_code == 0
    good = files(out / "train")
    state_path = out / "train" / ".state" / "train.mindrecord000.json"
    state = json.loads(state_path.read_text())
    if damage == "samples-not-a-list":
        damage = {**state, "samples": {"0": state["samples"][0]}}
    elif damage == "sample-field-of-wrong-type":
        damage = {**state, "samples": [{**state["samples"][0], "image_bytes": "12"}, *state["samples"][1:]]}
    state_path.write_text(json.dumps(damage))
    (out / "train" / "summary.json").write_text("[1, 2]")
    r = build_cli(root, out)
    assert r.exit_code == 0 and "(1 written)" in r.output, r.output + r.stderr
    assert files(out / "train") == good


# -- neighbour of 1: inspect-pipeline's output folder ---------------------------------------------

def test_inspect_pipeline_never_overwrites_a_users_files(out, tmp_path):
    config = config_file(tmp_path)
    look = tmp_path / "look"
    look.mkdir()
    (look / "sample_000.png").write_bytes(b"the user's picture")
    r = run("inspect-pipeline", "--config", config, "--data", out, "--out", look, "--n", 1)
    assert r.exit_code == 2 and f"error: {look}: not empty and not an earlier inspection" in r.stderr, r.stderr
    assert files(look) == {"sample_000.png": b"the user's picture"}
    fresh = tmp_path / "fresh"
    for n in (2, 1):  # an earlier inspection is replaced whole: no stale sample_001.png
        r = run("inspect-pipeline", "--config", config, "--data", out, "--out", fresh, "--n", n)
        assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in fresh.glob("*.png")) == ["sample_000.png"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
