#!/usr/bin/env python3
"""Writes orchestrator/src/apiserver/protobuf/schema.txt: the protobuf field
numbers and types of the Kubernetes kinds Shoal serves, read from the file
descriptors that every kubectl binary embeds (gzipped FileDescriptorProtos
registered by the generated Go code). kubectl sends `create` bodies as
protobuf; the API server decodes them with this table.

Usage: scripts/gen-proto-schema.py [path/to/kubectl] > schema.txt

Output, one message per block:
    message <full.name>
    <number> <jsonName> <type> [repeated|inline]
where <type> is a scalar (string, bytes, bool, int32, int64, uint32,
uint64, double, float), `.<full.message.name>`, or
`map:<keyType>:<valueType>`; `inline` marks an embedded struct whose
fields JSON puts in the parent.
"""
import re
import shutil
import sys
import zlib

# The API groups whose kinds Shoal stores, plus the apimachinery types they use.
FILES = [
    "k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto",
    "k8s.io/apimachinery/pkg/runtime/generated.proto",
    "k8s.io/apimachinery/pkg/util/intstr/generated.proto",
    "k8s.io/apimachinery/pkg/api/resource/generated.proto",
    "k8s.io/api/core/v1/generated.proto",
    "k8s.io/api/apps/v1/generated.proto",
    "k8s.io/api/batch/v1/generated.proto",
    "k8s.io/api/networking/v1/generated.proto",
    "k8s.io/api/autoscaling/v1/generated.proto",
    "k8s.io/api/autoscaling/v2/generated.proto",
    "k8s.io/api/policy/v1/generated.proto",
    "k8s.io/api/coordination/v1/generated.proto",
    "k8s.io/api/node/v1/generated.proto",
    "k8s.io/api/discovery/v1/generated.proto",
    "k8s.io/api/events/v1/generated.proto",
    "k8s.io/api/authorization/v1/generated.proto",
    "k8s.io/api/authentication/v1/generated.proto",
    "k8s.io/api/rbac/v1/generated.proto",
]

# Go structs embedded with `json:",inline"`: a field in protobuf, its
# fields spliced into the parent in JSON.
INLINE = {
    "k8s.io.api.core.v1.Volume.volumeSource",
    "k8s.io.api.core.v1.PersistentVolumeSpec.persistentVolumeSource",
    "k8s.io.api.core.v1.Probe.handler",
    "k8s.io.api.core.v1.EphemeralContainer.ephemeralContainerCommon",
    "k8s.io.api.networking.v1.IngressRule.ingressRuleValue",
}

SCALARS = {1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32",
           8: "bool", 9: "string", 12: "bytes", 13: "uint32", 17: "int32",
           18: "int64", 6: "uint64", 7: "uint32", 15: "int32", 16: "int64"}


def varint(b, i):
    shift = n = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def fields(b):
    """(number, wire type, value) of one encoded message."""
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, v


def field_desc(b):
    f = {}
    for num, _, v in fields(b):
        if num == 1:
            f["name"] = v.decode()
        elif num == 3:
            f["number"] = v
        elif num == 4:
            f["label"] = v
        elif num == 5:
            f["type"] = v
        elif num == 6:
            f["type_name"] = v.decode()
        elif num == 10:
            f["json_name"] = v.decode()
    return f


def message(b, prefix, out):
    name, flds, nested, map_entry = None, [], [], False
    for num, _, v in fields(b):
        if num == 1:
            name = v.decode()
        elif num == 2:
            flds.append(field_desc(v))
        elif num == 3:
            nested.append(v)
        elif num == 7:
            map_entry = any(n == 7 and x == 1 for n, _, x in fields(v))
    full = f"{prefix}.{name}"
    out[full] = {"fields": flds, "map_entry": map_entry}
    for n in nested:
        message(n, full, out)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else shutil.which("kubectl")
    data = open(path, "rb").read()
    descriptors = {}
    for m in re.finditer(rb"\x1f\x8b\x08\x00\x00\x00\x00\x00", data):
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[m.start():m.start() + 4_000_000])
        except zlib.error:
            continue
        try:
            name = package = None
            msgs = []
            for num, _, v in fields(raw):
                if num == 1:
                    name = v.decode()
                elif num == 2:
                    package = v.decode()
                elif num == 4:
                    msgs.append(v)
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
        if name in FILES:
            descriptors[name] = (package, msgs)
    missing = [f for f in FILES if f not in descriptors]
    if missing:
        sys.exit(f"not in {path}: {missing}")
    out = {}
    for f in FILES:
        package, msgs = descriptors[f]
        for mb in msgs:
            message(mb, "." + package, out)

    def type_of(f):
        if f["type"] in (11, 14):
            return f["type_name"]
        return SCALARS[f["type"]]

    print("# Generated by scripts/gen-proto-schema.py from kubectl's embedded")
    print("# descriptors; do not edit.")
    for full, m in sorted(out.items()):
        if m["map_entry"]:
            continue
        print(f"message {full[1:]}")
        for f in m["fields"]:
            t = type_of(f)
            entry = out.get(t) if t.startswith(".") else None
            if entry and entry["map_entry"]:
                kv = {x["number"]: type_of(x).lstrip(".") for x in entry["fields"]}
                t = f"map:{kv[1]}:{kv[2]}"
                rep = ""
            else:
                rep = " repeated" if f.get("label") == 3 else ""
            if t.startswith("."):
                t = t[1:]
            name = f.get("json_name", f["name"])
            if f"{full[1:]}.{name}" in INLINE:
                rep = " inline"
            print(f"{f['number']} {name} {t}{rep}")


main()
