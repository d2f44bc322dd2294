import numpy as np

from lm_pipeline.data.shards import ShardWriter, TokenShards


def test_shards_have_fixed_size_and_read_back_as_one_stream(tmp_path):
    stream = np.arange(2500) % 700
    writer = ShardWriter(tmp_path / "train", np.uint16, shard_tokens=1024)
    for piece in np.split(stream, [10, 1500, 1501]):  # appends of any size, across shard borders
        writer.append(piece)
    entries = writer.close()
    assert [e["tokens"] for e in entries] == [1024, 1024, 452]
    assert [e["file"] for e in entries] == ["train/00000.bin", "train/00001.bin", "train/00002.bin"]
    shards = TokenShards(tmp_path, entries, np.uint16)
    assert len(shards) == 2500
    assert shards[1000:1100].tolist() == stream[1000:1100].tolist()  # a window across two shards
    assert shards[0:2500].tolist() == stream.tolist() and np.asarray(shards).tolist() == stream.tolist()
    assert shards.token_counts(700).tolist() == np.bincount(stream, minlength=700).tolist()
