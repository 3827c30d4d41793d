"""The topic segments: every topic's messages on disk in one shared sequence of segment files
(`blocks`), indexed and checkpointed in SQLite (`index`), behind the broker's `RecordStore` (`store`)."""

from wiber.storage.topics.store import CheckpointJob, TopicStore

__all__ = ["CheckpointJob", "TopicStore"]
