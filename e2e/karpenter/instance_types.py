#!/usr/bin/env python3
"""Prints the instance types the e2e environment gives Karpenter's KWOK provider
(INSTANCE_TYPES_FILE_PATH): real Graviton (c7g, m7g) and x86 (c7i, m7i) shapes, their vCPUs and
memory as AWS sells them, 20Gi of ephemeral storage as an EKS node's default root volume gives, pods
as EKS allows them, on-demand and spot in two zones at us-east-1 list prices (spot at 35 %)."""

import json

SHAPES = [  # name, arch, vcpu, memory GiB, max pods, on-demand $/h
    ("c7g.large", "arm64", 2, 4, 29, 0.0725),
    ("c7g.xlarge", "arm64", 4, 8, 58, 0.145),
    ("c7g.2xlarge", "arm64", 8, 16, 58, 0.29),
    ("m7g.large", "arm64", 2, 8, 29, 0.0816),
    ("m7g.xlarge", "arm64", 4, 16, 58, 0.1632),
    ("m7g.2xlarge", "arm64", 8, 32, 58, 0.3264),
    ("c7i.large", "amd64", 2, 4, 29, 0.08925),
    ("c7i.xlarge", "amd64", 4, 8, 58, 0.1785),
    ("c7i.2xlarge", "amd64", 8, 16, 58, 0.357),
    ("m7i.large", "amd64", 2, 8, 29, 0.1008),
    ("m7i.xlarge", "amd64", 4, 16, 58, 0.2016),
    ("m7i.2xlarge", "amd64", 8, 32, 58, 0.4032),
]
ZONES = ["test-zone-a", "test-zone-b"]


def offering(price, capacity_type, zone):
    return {
        "Price": price,
        "Available": True,
        "Requirements": [
            {"key": "karpenter.sh/capacity-type", "operator": "In", "values": [capacity_type]},
            {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]},
        ],
    }


types = [
    {
        "name": name,
        "offerings": [offering(price, "on-demand", z) for z in ZONES]
        + [offering(round(price * 0.35, 5), "spot", z) for z in ZONES],
        "architecture": arch,
        "operatingSystems": ["linux"],
        "resources": {
            "cpu": str(vcpu),
            "memory": f"{memory}Gi",
            "ephemeral-storage": "20Gi",
            "pods": str(pods),
        },
    }
    for name, arch, vcpu, memory, pods, price in SHAPES
]
print(json.dumps(types, indent=1))
