"""gradmix-tune: class-incremental learning with replay and GradMix, swept with Ray Tune."""
__version__ = "0.1.0"
