"""The input pipelines: training batches with MindSpore's native augmentation, eval images, their inspection."""
