"""`lmp serve`: the champion behind an OpenAI-compatible endpoint on a real Ray Serve application,
called by the official `openai` client and by lm-evaluation-harness, while the alias moves.

The session's application (`endpoint`: two replicas, a bearer token, shared with the continuous
module), on the registry module's project (three registered versions; tests/conftest.py runs the
three modules on one lane, registry first)."""

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.integration.conftest import Endpoint, lmp, replica_pids, two_ray_nodes, wait_for
from tests.integration.test_models import corpus_texts, hub_folder
from tests.services import BIN, free_port, process_group

pytestmark = [pytest.mark.serving, pytest.mark.integration]

MODEL = "lm-pipeline"
PROMPTS = ["The tuple", "A module is", "def f(x):", "Lists"]


def registry(project: Path):
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return mlflow.MlflowClient(uri, registry_uri=uri)


def champion(project: Path) -> str:
    return str(registry(project).get_model_version_by_alias(MODEL, "champion").version)


def generate(project: Path, version: str, prompt: str, *options: str) -> str:
    return lmp(project, "-q", "generate", "--model", f"models:/{MODEL}/{version}", "--max-new-tokens", "16",
               *options, prompt).removesuffix("\n")


def complete_with(project: Path, version: str, prompt: str, tokens: int) -> str:
    """The greedy answer of a version's registered weights, computed here, not through the endpoint."""
    from lm_pipeline.model.generate import complete
    from lm_pipeline.registry.decision import load_registered

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        model, tokenizer = load_registered(MODEL, version)
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return complete(model, tokenizer, prompt, tokens)


def test_the_openai_client_gets_completions_and_streams_that_equal_lmp_generate(endpoint):
    client, version = endpoint.client(), champion(endpoint.project)
    assert endpoint.served() == f"{MODEL}/{version}"
    answer = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=16, temperature=0)
    assert answer.model == f"{MODEL}/{version}" and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.choices[0].text == complete_with(endpoint.project, version, PROMPTS[0], 16)
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    streamed = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=16, temperature=0,
                                         stream=True)
    pieces = [chunk.choices[0].text for chunk in streamed]
    assert len(pieces) > 2 and "".join(pieces) == answer.choices[0].text
    *_, counted = client.completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    assert counted.choices == [] and counted.usage == answer.usage  # the client's own parsing
    assert client.models.retrieve(f"{MODEL}/{version}").id == f"{MODEL}/{version}"
    sampled = client.completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=16, temperature=0.9,
                                        seed=7)
    assert sampled.choices[0].text == generate(endpoint.project, version, PROMPTS[1], "--temperature", "0.9",
                                               "--seed", "7")


def test_concurrent_requests_are_batched_and_each_answer_is_the_one_it_gets_alone(endpoint):
    client = endpoint.client()
    alone = {p: client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0).choices[0].text
             for p in PROMPTS}
    before = endpoint.stats()
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        answers[i] = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                               temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {i: alone[PROMPTS[i % len(PROMPTS)]] for i in range(24)}
    # Some forward pass served more than one request (stats are per replica: either one's will do).
    assert max(endpoint.stats()["batch_mean"] for _ in range(6)) > 1 or before["batch_mean"] > 1


def test_bad_requests_get_a_4xx_naming_the_problem(endpoint):
    ok = {"model": MODEL, "prompt": "The", "max_tokens": 4}
    cases = [({**ok, "model": "gpt-4"}, 404, "model"), ({**ok, "max_tokens": 33}, 400, "max_tokens"),
             ({**ok, "temperature": -1}, 400, "temperature"), ({**ok, "prompt": []}, 400, "prompt"),
             ({**ok, "logit_bias": {"1": 5}}, 400, "logit_bias"),
             ({**ok, "prompt": "x " * 200, "echo": True, "logprobs": 1}, 400, "prompt")]
    for body, status, param in cases:
        code, answer, _ = endpoint.post("/v1/completions", body, endpoint.token)
        assert (code, answer["error"]["param"]) == (status, param), answer
    code, answer, _ = endpoint.post("/v1/completions", b'{"model": "lm-pipeline", "prompt": ', endpoint.token)
    assert code == 400 and "not valid JSON" in answer["error"]["message"]
    code, answer, _ = endpoint.post("/v1/completions", ok)  # no token
    assert code == 401 and answer["error"]["param"] == "Authorization"
    code, answer, _ = endpoint.post("/v1/completions", ok, token="wrong")
    assert code == 401
    code, answer, _ = endpoint.post("/v1/chat/completions", {"model": MODEL, "messages": [
        {"role": "user", "content": "hi"}]}, endpoint.token)
    assert code == 400 and "no chat template" in answer["error"]["message"]


def test_thirty_two_clients_see_no_failure_and_no_mixed_version_while_the_alias_moves_twice(endpoint):
    project, first = endpoint.project, champion(endpoint.project)
    other = next(v for v in ("1", "3") if v != first)
    expected = {v: complete_with(project, v, PROMPTS[0], 8) for v in (first, other)}
    assert expected[first] != expected[other]  # so an answer shows which weights made it
    results, failures, stop = [], [], threading.Event()

    def client_loop() -> None:
        client = endpoint.client(timeout=60)
        while not stop.is_set():
            try:
                raw = client.completions.with_raw_response.create(
                    model=MODEL, prompt=PROMPTS[0], max_tokens=8, temperature=0)
                answer = raw.parse()
                results.append((answer.model, raw.headers["x-model-version"], answer.choices[0].text))
            except Exception as err:  # every failure counts
                failures.append(repr(err))

    threads = [threading.Thread(target=client_loop) for _ in range(32)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        lmp(project, "promote", other, "--reason", "serving test: move")
        wait_for(lambda: any(r[0] == f"{MODEL}/{other}" for r in results[-32:]), 60, "the new version")
        time.sleep(2)
        lmp(project, "promote", first, "--reason", "serving test: move back")
        wait_for(lambda: all(r[0] == f"{MODEL}/{first}" for r in results[-64:]), 60, "the first again")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:5]
    versions = Counter(model for model, _, _ in results)
    assert set(versions) == {f"{MODEL}/{first}", f"{MODEL}/{other}"} and len(results) > 64, versions
    for model, header, text in results:  # each answer made by the version it names, start to end
        assert header == model and text == expected[model.rsplit("/", 1)[1]]

    def tags() -> dict:  # the registry shows where the model is served and which version answers
        return registry(project).get_registered_model(MODEL).tags

    wait_for(lambda: tags().get("serving.version") == first, 10, "the registry naming the served version")
    assert tags()["serving.endpoint"] == f"{endpoint.url}/v1"
    assert not any(endpoint.token in value for value in tags().values())


def test_a_replica_killed_under_load_is_replaced_and_requests_keep_being_answered(endpoint):
    # Both replicas answering first: under load, one may still be loading the version the test
    # before swapped to, and the router sends every call to the other meanwhile.
    sightings = []
    wait_for(lambda: len(sightings.append(replica_pids(endpoint)) or sightings[-1]) == 2, 120,
             "both replicas answering")
    pids = sightings[-1]
    victim = min(pids)
    answered, errors, stop = [], [], threading.Event()

    def client_loop() -> None:
        client = endpoint.client(max_retries=2)  # what a client does with a 5xx: retry
        while not stop.is_set():
            try:
                client.completions.create(model=MODEL, prompt=PROMPTS[2], max_tokens=8, temperature=0)
                answered.append(time.monotonic())
            except Exception as err:
                errors.append(err)

    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: len(replica_pids(endpoint) - {victim}) == 2, 120, "a replacement replica")
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sum(t > killed_at for t in answered) > 10  # the endpoint went on answering
    for err in errors:  # what was lost with the replica got a clear error, not a hang
        assert getattr(err, "status_code", None) in (500, 502, 503), repr(err)


@pytest.mark.security
def test_a_tampered_version_is_refused_and_the_previous_one_keeps_serving(endpoint):
    """The weights served are the registered ones: a version whose safetensors changed after
    registration is refused by the replicas (and by `lmp generate` and the MLflow pyfunc)."""
    from safetensors.torch import load_file, save_file

    project, before = endpoint.project, champion(endpoint.project)
    target = next(v for v in ("1", "3") if v != before)
    uri = registry(project).get_model_version_download_uri(MODEL, target)
    weights = next(Path(uri.removeprefix("file://")).rglob("model.safetensors"))
    original = weights.read_bytes()
    tensors = load_file(weights)
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 0.01  # a valid model, not the registered one
    save_file(tensors, weights, metadata={"format": "pt"})
    try:
        # `lmp promote` refuses it too: the alias moved by hand, as anyone who can write to the store could
        registry(project).set_registered_model_alias(MODEL, "champion", target)
        wait_for(lambda: f"keeping {MODEL}/{before}" in endpoint.log.read_text(), 60, "the refusal logged")
        assert endpoint.served() == f"{MODEL}/{before}"
        code, answer, headers = endpoint.post("/v1/completions", {"model": MODEL, "prompt": "The"},
                                              endpoint.token)
        assert code == 200 and answer["model"] == f"{MODEL}/{before}"
        refused = subprocess.run([str(BIN / "lmp"), "generate", "--model", f"models:/{MODEL}/{target}", "x"],
                                 cwd=project, capture_output=True, text=True)
        assert refused.returncode == 1 and "changed after it was registered" in refused.stderr
        with pytest.raises(Exception, match="not the one recorded at registration"):
            mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
            try:
                mlflow.pyfunc.load_model(f"models:/{MODEL}/{target}")
            finally:
                mlflow.set_tracking_uri(None)
    finally:
        weights.write_bytes(original)
        lmp(project, "promote", before, "--reason", "serving test: back to the trusted version")
    wait_for(lambda: endpoint.served() == f"{MODEL}/{before}", 30, "the trusted version served")


def test_a_stop_signal_while_starting_ends_start_up_cleanly(registered_project, tmp_path):
    """SIGTERM, as a container runtime or systemd stops a service, while the endpoint is still
    starting: exit 143 with a line saying so, and nothing of its Ray left. Ray's own handler
    aborted the process instead (exit 134, a C++ stack dump)."""
    params = yaml.safe_load((registered_project / "params.yaml").read_text())
    params["serve"] |= {"port": free_port(), "replicas": 1, "cpus_per_replica": 0.5}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "lmp"), "--params", str(tmp_path / "serve.yaml"), "serve"],
                                cwd=registered_project, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: "deploying" in log.read_text() or proc.poll() is not None, 120, "start-up")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, log.read_text()[-3000:]
        output = log.read_text()
        assert "lmp serve: stopped by SIGTERM while starting" in output, output[-3000:]
        assert "SIGTERM received" not in output  # Ray's C++ handler's stack dump
        wait_for(lambda: not process_group(proc.pid, of="session"), 20, "every process of its Ray gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in process_group(proc.pid, of="session"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.metrics
@pytest.mark.usefixtures("forget_mlflow_uri")
def test_lm_evaluation_harness_scores_through_the_endpoint_what_it_scores_offline(endpoint, tmp_path,
                                                                                 monkeypatch):
    """lm-eval's own `local-completions` client (echo + logprobs) against the endpoint, and its `hf`
    model on the served version's downloaded folder, as the evaluate stage runs it: the same
    log-likelihoods, up to float32 differences between the two implementations (1e-4 nats)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_pipeline.evaluation.harness import write_task_folder
    from lm_pipeline.registry.downloads import download_version_folder

    project, version = endpoint.project, champion(endpoint.project)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    folder = download_version_folder(registry(project).get_model_version(MODEL, version), tmp_path / "model")
    context = json.loads((folder / "config.json").read_text())["n_positions"]
    # Short passages (the tiny model's context is 32 tokens): both sides see every token.
    records = [{"context": p, "choices": [" type", " is", " of", " the"], "label": i % 4}
               for i, p in enumerate(PROMPTS + ["The value of", "In Python", "A list of", "Return the"])]
    write_task_folder(tmp_path / "tasks", {"lmp_cloze_choice": records}, cache_dir=tmp_path / "cache")
    manager = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    monkeypatch.setenv("OPENAI_API_KEY", endpoint.token)  # what local-completions sends as its bearer token

    def loglikelihoods(model: str, args: dict) -> list[float]:
        results = lm_eval.simple_evaluate(model=model, model_args=args, tasks=["lmp_cloze_choice"],
                                          task_manager=manager, bootstrap_iters=0, log_samples=True,
                                          device="cpu")
        samples = sorted(results["samples"]["lmp_cloze_choice"], key=lambda s: s["doc_id"])
        return [resp[0][0] for s in samples for resp in s["resps"]]

    offline = loglikelihoods("hf", {"pretrained": str(folder), "add_bos_token": True})
    # Text prompts open a document on the endpoint (<|endoftext|> first), as add_bos_token does here.
    served = loglikelihoods("local-completions", {
        "base_url": f"{endpoint.url}/v1/completions", "model": MODEL, "tokenizer": str(folder),
        "tokenizer_backend": "huggingface", "tokenized_requests": False, "max_length": context,
        "num_concurrent": 4})
    assert len(served) == len(offline) == 4 * len(records)
    assert len(set(offline)) > len(records)  # precondition: the scores differ from choice to choice
    assert served == pytest.approx(offline, abs=1e-4)


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def test_the_serve_flow_deploys_a_chat_model_on_a_cluster_for_the_openai_chat_client(
        registered_project, tmp_path, prefect_server, monkeypatch):
    """The Prefect flow deploys `lmp serve --detach` onto a two-node Ray cluster (the token in the
    nodes' environment) and finishes; the application stays up. Its model, a tiny Llama folder with
    a chat template: the chat answer is the completion of the prompt its template renders."""
    from tokenizers import Tokenizer

    from lm_pipeline.flows.serve import serve
    from lm_pipeline.serving.chat import render

    folder = hub_folder(tmp_path / "chat-llama", "llama", corpus_texts(registered_project))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": CHAT_TEMPLATE}))
    port, token = free_port(), secrets.token_urlsafe(8)
    params = yaml.safe_load((registered_project / "params.yaml").read_text())
    params["serve"] |= {"port": port, "cpus_per_replica": 0.5}
    (registered_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with two_ray_nodes({"LMP_SERVE_TOKEN": token}) as nodes:
        monkeypatch.setenv("RAY_ADDRESS", nodes.address)
        monkeypatch.setenv("LMP_SERVE_TOKEN", token)
        state = serve(project_dir=str(registered_project), model=str(folder), return_state=True)
        assert state.is_completed(), state.message
        server = Endpoint(f"http://127.0.0.1:{port}", token, registered_project, tmp_path / "none.log")
        client, model = server.client(), server.served()  # up after the flow, with no driver left
        assert model == folder.name
        messages = [{"role": "system", "content": "You answer briefly."},
                    {"role": "user", "content": "What is a tuple?"}]
        chat = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
        prompt = render(CHAT_TEMPLATE, tuple(messages), model, {"bos_token": "<s>"})
        ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids
        plain = client.completions.create(model=model, prompt=ids, max_tokens=12, temperature=0)
        answer = chat.choices[0].message
        assert answer.role == "assistant" and answer.content == plain.choices[0].text and answer.content
        assert chat.usage.prompt_tokens == len(ids) == plain.usage.prompt_tokens
        stream = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0,
                                                stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == answer.content
