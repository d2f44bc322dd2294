import numpy as np

from lm_pipeline.data.processed import split_documents, token_dtype


def test_token_dtype_fits_vocab():
    assert token_dtype(65536) is np.uint16
    assert token_dtype(65537) is np.uint32


def test_split_documents_cuts_at_eot():
    stream = np.array([5, 6, 0, 7, 0, 8, 9, 10, 0])
    assert [d.tolist() for d in split_documents(stream, 0)] == [[5, 6], [7], [8, 9, 10]]
