"""The pure scoring core: no I/O, no Kafka, no Redis, no wall clock."""
