"""Text generation used by `tinylm sample` and `tinylm.load(run_dir).generate(...)`."""

from tinylm.generation.sampling import generate_ids, sample_next, stream_text

__all__ = ["generate_ids", "sample_next", "stream_text"]
