"""The deployment manifests parse and describe the same job (they are not applied here: no
Kubernetes cluster or Docker engine on this machine)."""

from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def pods(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_cluster_and_job_share_image_and_storage():
    cluster = yaml.safe_load((INFRA / "kuberay/raycluster.yaml").read_text())
    job = yaml.safe_load((INFRA / "kuberay/rayjob.yaml").read_text())
    assert (cluster["kind"], job["kind"]) == ("RayCluster", "RayJob")
    assert cluster["apiVersion"] == job["apiVersion"] == "ray.io/v1"
    assert " train" in job["spec"]["entrypoint"] and job["spec"]["entrypoint"].startswith("lmp ")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        containers = pods(spec)
        assert {c["image"] for c in containers} == {"lm-pipeline:latest"}
        assert all(m["mountPath"] == "/workspace/shared" for c in containers for m in c["volumeMounts"])
        assert sum(g["replicas"] for g in spec["workerGroupSpecs"]) >= 2


def test_cluster_launcher_starts_head_and_workers_from_the_project_env():
    launcher = yaml.safe_load((INFRA / "ray/cluster.yaml").read_text())
    assert launcher["provider"]["type"] == "local"
    assert any("--head" in c for c in launcher["head_start_ray_commands"])
    assert any("--address" in c for c in launcher["worker_start_ray_commands"])
    assert len(launcher["provider"]["worker_ips"]) == launcher["max_workers"]
