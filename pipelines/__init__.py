"""Ray jobs: curate (raw audio → segment shards); later build, publish."""

__version__ = "0.1.0"
