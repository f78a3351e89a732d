"""Batch extraction at scale: a saved pipeline over many documents on Ray Data, resumable.

`inputs` lists JSONL or Parquet shards and cuts them into parts of fixed size (the unit that is
done exactly once); `worker` turns one batch of documents into output rows inside a Ray Data
actor (the pipeline loads once per actor); `store` owns the output folder (atomic shards, the
manifest, errors, the run summary); `batch` runs it all on a local Ray or a cluster. Ray is
imported only inside `batch`'s functions: importing this package, or the CLI, loads no Ray.
"""
