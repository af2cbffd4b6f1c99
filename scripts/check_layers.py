#!/usr/bin/env python3
"""Fails when an #include points up a layer, or when a tool includes a private header.

The layers, bottom to top (docs/ARCHITECTURE.md); a file may include its own layer and the ones below:
  base        src/{io,text,tasks}, src/tensor.cc, src/version.cc; the public attn/{tensor,error,
              attention,activation,version}.h, attn/io/*, attn/text/*, attn/tasks/*
  cpu         src/cpu: the kernels and their contract (AttentionProblem, tile traits)
  ops         src/ops: validation and dispatch of attention, the neural-net primitives
  layers      src/layers, attn/layers/*: multi-head attention (forward, backward, KV cache), blocks
  models      src/models, attn/models/*: Transformer, BERT
  generation  src/generation, attn/generation.h: greedy and beam search over a StepDecoder
  translate   src/translate, attn/translator.h: the Translator
  train       src/train, attn/train/*: the trainer
  umbrella    attn/attn.h (for users only)
tools/, python/ and examples/ include public headers (attn/...) and their own folder's headers only.
tests/, bench/ and fuzz/ may include anything (they test the internals).

  scripts/check_layers.py [ROOT]     prints each violation; exit 1 if there is any
"""
import pathlib
import re
import sys

ORDER = ["base", "cpu", "ops", "layers", "models", "generation", "translate", "train", "umbrella"]
RANK = {name: i for i, name in enumerate(ORDER)}
SRC_LAYER = {"io": "base", "text": "base", "tasks": "base", "cpu": "cpu", "ops": "ops", "layers": "layers",
             "models": "models", "generation": "generation", "translate": "translate", "train": "train"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def public_layer(header):  # "attn/models/bert.h" -> "models"
    parts = header.split("/")
    if parts[0] != "attn":
        return None
    if len(parts) == 2:
        name = parts[1]
        return {"generation.h": "generation", "translator.h": "translate", "attn.h": "umbrella"}.get(name, "base")
    return {"io": "base", "text": "base", "tasks": "base", "layers": "layers", "models": "models",
            "train": "train"}.get(parts[1], "base")


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


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
    problems = []
    for folder in ["include", "src"]:
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".h", ".cc"):
                continue
            mine = layer_of(path, root)
            for header in INCLUDE.findall(path.read_text(encoding="utf-8")):
                theirs = public_layer(header) or private_layer(header)
                if theirs is None:
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
            for header in INCLUDE.findall(path.read_text(encoding="utf-8")):
                if header.startswith("attn/") or (path.parent / header).exists():
                    continue
                problems.append(f"{path.relative_to(root)}: includes \"{header}\", a private header of the library "
                                f"(tools, python and examples use the public headers in include/attn only)")
    for p in problems:
        print(p)
    print(f"check_layers: {len(problems)} problem(s)" if problems
          else "check_layers: every include points down a layer")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
