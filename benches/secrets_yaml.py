"""Writes a YAML stream of Mesh `default` and N Secrets s-0 … s-(N-1) with 1 KiB random
values, as `kuma-secrets import -f` takes it, on stdout: the input the shell benches load.

    python3 benches/secrets_yaml.py N [LABEL=VALUE ...]   # labels on every Secret
"""
import base64
import os
import sys

count = int(sys.argv[1])
labels = "".join(f"  {k}: {v}\n" for k, v in (a.split("=", 1) for a in sys.argv[2:]))
out = sys.stdout
out.write("type: Mesh\nname: default\n")
for i in range(count):
    data = base64.b64encode(os.urandom(1024)).decode()
    head = f"---\ntype: Secret\nmesh: default\nname: s-{i}\n"
    out.write(head + (f"labels:\n{labels}" if labels else "") + f"data: {data}\n")
