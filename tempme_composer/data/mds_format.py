"""Facts about our MDS shards shared by the writers (converter, demo generator) and the pre-flight check."""

__all__ = ['SHARD_HASHES']

#: Hashes recorded per shard in index.json (fast, non-cryptographic): the pre-flight check recomputes them to
#: catch a shard whose size is right but whose bytes are corrupt (a bad copy or disk).
SHARD_HASHES = ['xxh64']
