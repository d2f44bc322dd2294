"""What a failure says about trying again: whether it may pass (a server that did not answer, a
busy database), which `lmp` tells by its exit code and the flows read to decide on a retry."""

from __future__ import annotations

# sysexits.h's EX_TEMPFAIL: failed for a reason that may pass, so trying again is worth it; the
# flows retry a stage only then (flows/pipeline.py).
TEMPORARY_FAILURE = 75

# Raised by the libraries under us when a server did not answer in time or at all: requests and
# urllib3 (MLflow's client), botocore (buckets). Named, not imported: none is needed to tell.
UNANSWERED = {"ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout", "RetryError", "MaxRetryError",
              "NewConnectionError", "ProtocolError", "EndpointConnectionError", "ConnectTimeoutError",
              "ReadTimeoutError", "ConnectionClosedError"}


def may_pass(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, may pass when tried again: the network, a
    server that did not answer, a database busy with another writer. Not bad input or settings."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, (ConnectionError, TimeoutError)) or type(err).__name__ in UNANSWERED:
            return True
        if type(err).__name__ == "OperationalError" and any(w in str(err) for w in ("locked", "busy")):
            return True
        err = err.__cause__ or err.__context__
    return False
