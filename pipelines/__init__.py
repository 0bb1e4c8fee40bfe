"""Ray jobs as lists of named stages: curate (raw audio → segment shards); the ``audiomill`` CLI."""
