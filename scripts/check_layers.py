#!/usr/bin/env python3
"""Fails when an #include points up a layer, or when a tool includes a private header.

The layers, bottom to top (docs/ARCHITECTURE.md); a file may include its own layer and the ones below:
  base        src/{io,text,tasks}, src/tensor.cc (and tensor_unfilled.h), src/version.cc; the public attn/{tensor,error,
              attention,activation,version}.h, attn/io/*, attn/text/*, attn/tasks/*
  cpu         src/cpu: the kernels and their contract (AttentionProblem, tile traits)
  cuda        src/cuda, attn/cuda.h, attn/cuda_c.h: the GPU kernels and their host API (libattn_cuda, a library of
              its own: it includes only base headers and its own)
  ops         src/ops: validation and dispatch of attention, the neural-net primitives
  layers      src/layers, attn/layers/*: multi-head attention (forward, backward, KV cache), blocks
  models      src/models, attn/models/*: Transformer, BERT
  generation  src/generation, attn/generation.h: greedy and beam search over a StepDecoder
  translate   src/translate, attn/translator.h: the Translator
  train       src/train, attn/train/*: the trainer
  dist        src/dist, attn/dist/*: ring attention and data-parallel training over MPI (optional). It sits on top
              and, like the tools, uses only the public headers of the library (and its own src/dist headers)
  umbrella    attn/attn.h (for users only; it does not include attn/dist: that needs MPI)
tools/, python/ and examples/ include public headers (attn/...) and their own folder's headers only.
tests/, bench/ and fuzz/ may include anything (they test the internals).

  scripts/check_layers.py [ROOT]     prints each violation; exit 1 if there is any
"""
import pathlib
import re
import sys

ORDER = ["base", "cpu", "cuda", "ops", "layers", "models", "generation", "translate", "train", "dist", "umbrella"]
RANK = {name: i for i, name in enumerate(ORDER)}
SRC_LAYER = {"io": "base", "text": "base", "tasks": "base", "cpu": "cpu", "cuda": "cuda", "ops": "ops",
             "layers": "layers",
             "models": "models", "generation": "generation", "translate": "translate", "train": "train",
             "dist": "dist",
             "tensor_unfilled.h": "base"}  # (src's own top-level header, beside tensor.cc)
INCLUDE = re.compile(r'^\s*#\s*include\s+(?:"([^"]+)"|<(attn/[^>]+)>)', re.M)


PUBLIC_TOP = {"tensor.h": "base", "half.h": "base", "error.h": "base", "attention.h": "base", "blas.h": "base", "activation.h": "base",
              "version.h": "base", "cuda.h": "cuda", "cuda_c.h": "cuda", "generation.h": "generation",
              "translator.h": "translate", "attn.h": "umbrella"}
PUBLIC_DIRS = {"io": "base", "text": "base", "tasks": "base", "layers": "layers", "models": "models",
               "train": "train", "dist": "dist"}


def public_layer(header):  # "attn/models/bert.h" -> "models"; "?" for a public header of no known layer
    parts = header.split("/")
    if parts[0] != "attn":
        return None
    if len(parts) == 2:
        return PUBLIC_TOP.get(parts[1], "?")
    return PUBLIC_DIRS.get(parts[1], "?")


def private_layer(header):  # "ops/nn.h" -> "ops"; None when not a private header of src/
    first = header.split("/")[0]
    return SRC_LAYER.get(first)


def layer_of(path, root):
    rel = path.relative_to(root).parts
    if rel[0] == "include":
        return public_layer("/".join(rel[1:]))
    if rel[0] == "src":
        return SRC_LAYER.get(rel[1], "base") if len(rel) > 2 else "base"
    return None


def self_test():
    """The check catches what it is for: a tree with one upward include and one tool reaching inside."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        files = {"src/models/m.cc": '#include "attn/translator.h"\n', "tools/attn/t.cc": '#include "ops/nn.h"\n',
                 "src/ops/o.cc": '#include "cpu/simd.h"\n#include <attn/tensor.h>\n',
                 "src/dist/d.cc": '#include "ops/nn.h"\n#include "attn/attention.h"\n#include "d.h"\n',
                 "src/dist/d.h": '#include "attn/tensor.h"\n'}
        for name, text in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
        (root / "include").mkdir()
        found = check(root)
    want = ["src/models/m.cc (models) includes", 'tools/attn/t.cc: includes "ops/nn.h"',
            'src/dist/d.cc: includes "ops/nn.h"']
    ok = len(found) == 3 and all(any(p.startswith(w) for p in found) for w in want)
    print("check_layers self-test:", "ok" if ok else f"FAILED, found {found}")
    return 0 if ok else 1


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
    problems = check(root)
    for p in problems:
        print(p)
    print(f"check_layers: {len(problems)} problem(s)" if problems
          else "check_layers: every include points down a layer")
    return 1 if problems else 0


def check(root):
    problems = []
    for folder in ["include", "src"]:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".h", ".cc", ".cu", ".cuh"):
                continue
            mine = layer_of(path, root)
            if mine == "?":
                problems.append(f"{path.relative_to(root)}: a public header of no known layer "
                                f"(add it to scripts/check_layers.py)")
                continue
            for quoted, angled in INCLUDE.findall(path.read_text(encoding="utf-8")):
                header = quoted or angled
                theirs = public_layer(header) or private_layer(header)
                if mine == "dist" and folder == "src" and not header.startswith("attn/"):
                    if not (path.parent / header).exists():
                        problems.append(f"{path.relative_to(root)}: includes \"{header}\"; the dist layer uses only "
                                        f"the public headers of the library (attn/...) and its own")
                    continue
                if theirs == "?":
                    problems.append(f"{path.relative_to(root)}: includes \"{header}\", a public header of no known "
                                    f"layer (add it to scripts/check_layers.py)")
                elif theirs is None:
                    problems.append(f"{path.relative_to(root)}: includes \"{header}\", which is no header of attn")
                elif RANK[theirs] > RANK[mine]:
                    problems.append(f"{path.relative_to(root)} ({mine}) includes \"{header}\" ({theirs}): "
                                    f"a layer may only include the ones below it")
                elif folder == "include" and private_layer(header):
                    problems.append(f"{path.relative_to(root)}: a public header includes the private \"{header}\"")
    for folder in ["tools", "python", "examples"]:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".h", ".cc", ".cpp"):
                continue
            for quoted, angled in INCLUDE.findall(path.read_text(encoding="utf-8")):
                header = quoted or angled
                if header.startswith("attn/") or (path.parent / header).exists():
                    continue
                problems.append(f"{path.relative_to(root)}: includes \"{header}\", a private header of the library "
                                f"(tools, python and examples use the public headers in include/attn only)")
    return problems


if __name__ == "__main__":
    sys.exit(main())
