"""Scaling out (``mode: jetstream``): `breachwatch ship` tails the logs and publishes each record
to a NATS JetStream stream partitioned by actor; `breachwatch run` workers own partitions
through leases in the shared PostgreSQL store and process them with the same Pipeline."""
