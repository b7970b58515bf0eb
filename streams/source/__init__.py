"""Sources: what takes micro-batches from Kafka and commits only what was delivered.

- `base`: the `Source` protocol, `ConsumerState` (what health reads), `BatchProcessor`
  (everything below "take", shared), the exit policy;
- `librdkafka`: the librdkafka consumer and its loop in a thread (STREAMS_SOURCE=librdkafka);
- `faust`: the Faust agent (STREAMS_SOURCE=faust, the default);
- `faust_patches`: every patch of Faust's and aiokafka's internals, version-checked at start-up.

A new source takes batches its own way, builds `InRecord`s, hands each batch to a
`BatchProcessor` and commits what it returns; decode, infer, encode, produce and dead letters
are the pipeline's and the processor's."""

from .base import EXIT_FATAL, EXIT_UNFINISHED_BATCH, BatchProcessor, ConsumerState, Source

__all__ = ["EXIT_FATAL", "EXIT_UNFINISHED_BATCH", "BatchProcessor", "ConsumerState", "Source"]
