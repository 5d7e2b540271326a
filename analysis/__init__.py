"""What a model costs: parameter and FLOP counts, memory estimates of a forward, the `info` report."""
