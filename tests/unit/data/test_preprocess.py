import json

from lm_pipeline.data.preprocess import UniqueTexts


def test_unique_texts_keeps_the_first_of_each_text_streaming(tmp_path):
    path = tmp_path / "documents.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate("xyxzy")))
    texts = UniqueTexts(path)
    assert list(texts) == ["x", "y", "z"] and texts.duplicates == 2
    assert list(texts) == ["x", "y", "z"] and texts.duplicates == 2  # a second pass starts afresh
