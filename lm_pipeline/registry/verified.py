"""A registered version downloaded and checked before anyone serves it with MLflow (`lmp verify`).

`mlflow models serve -m models:/...` runs the version's pyfunc code from the artifact store,
unchecked. This downloads the whole version, refuses it unless its code (everything but the
weights folder) hashes to the `code_sha256` recorded at registration and its weights to
`weights_sha256`, and leaves the checked copy to serve from: serving the copy, not the store,
means what runs is what was checked.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lm_pipeline.registry.aliases import RegistryError, model_version
from lm_pipeline.registry.decision import load_checked
from lm_pipeline.registry.downloads import download_version_folder
from lm_pipeline.registry.pyfunc import CODE_TAG, code_sha256


def verify(uri: str, dest: Path | None = None) -> str:
    """Check the version `uri` names; with `dest`, the checked copy is left there (and only a
    checked one). Returns what was checked, for the user."""
    import mlflow

    client = mlflow.MlflowClient()
    mv = model_version(client, uri)
    pinned = f"models:/{mv.name}/{mv.version}"
    if not (recorded := mv.tags.get(CODE_TAG)):
        raise RegistryError(f"{pinned} has no {CODE_TAG} tag (registered before lm-pipeline recorded its "
                            "code's hash), so what `mlflow models serve` would run cannot be checked; "
                            "refusing it: register the model again")
    if dest and dest.exists() and any(dest.iterdir()):
        raise RegistryError(f"{dest} is not empty: give a new folder for the checked copy")
    if dest:
        dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".lmp-verify-", dir=dest.parent if dest else None) as tmp:
        model_dir = download_version_folder(mv, Path(tmp))
        folder = model_dir.parents[1]  # <version>/artifacts/<model folder>
        if (actual := code_sha256(folder)) != recorded:
            raise RegistryError(f"{pinned}: its code hash {actual[:12]}... is not the one recorded at "
                                f"registration ({recorded[:12]}...): MLmodel, the loader, code/ or the "
                                "requirements changed in the artifact store after it was registered; "
                                "refusing it")
        load_checked(mv, model_dir, "cpu", "refusing it")
        if dest:
            if dest.exists():
                dest.rmdir()  # empty (checked above)
            folder.rename(dest)
    where = f"; the checked copy is in {dest}" if dest else ""
    return f"{pinned}: code and weights are the ones registered (code {recorded[:12]}...){where}"
