"""The `imagen` command.

```
imagen --model runs/demo "a red digit seven"        generate (same as `imagen sample`)
imagen train --config demo.yaml [--unet N] [k=v]    train from a recipe (resumes)
imagen config [base] [--path imagen_config.yaml]    write a starter recipe
imagen config --list                                the shipped recipes
imagen export --model runs/demo --output DIR        a TF SavedModel for TF Serving
```
"""

import argparse
import os
import shutil
import sys

from imagen_keras.recipes.config import available_recipes, find_recipe

COMMANDS = ("train", "sample", "config", "export")


def _config(argv):
    parser = argparse.ArgumentParser(prog="imagen config", description="Write a starter recipe.")
    parser.add_argument("recipe", nargs="?", default="base", help="shipped recipe to copy (base)")
    parser.add_argument("--path", default=None, help="file to write (default ./<recipe>.yaml)")
    parser.add_argument("--list", action="store_true", help="list the shipped recipes")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if args.list:
        for name in available_recipes():
            with open(find_recipe(name), encoding="utf-8") as f:
                first = f.readline().lstrip("# ").strip()
            print(f"{name:16s} {first}")
        return 0
    try:
        source = find_recipe(args.recipe)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = args.path or f"{os.path.splitext(os.path.basename(source))[0]}.yaml"
    if os.path.exists(path) and not args.force:
        print(f"error: {path} exists (pass --force to overwrite it)", file=sys.stderr)
        return 2
    shutil.copyfile(source, path)
    print(f"Wrote {path}. Train with: imagen train --config {path}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        from imagen_keras.recipes.train import add_train_arguments, exit_process, train_from_args

        parser = argparse.ArgumentParser(prog="imagen train", description="Train from a recipe.")
        add_train_arguments(parser)
        code = train_from_args(parser.parse_args(argv[1:]))
        if code == 130:
            exit_process(code)  # interrupted, checkpoint saved: exit without teardown
        return code
    if argv and argv[0] == "config":
        return _config(argv[1:])
    if argv and argv[0] == "export":
        from imagen_keras.recipes.export import build_parser, export_from_args

        return export_from_args(build_parser(prog="imagen export").parse_args(argv[1:]), argv[1:])
    from imagen_keras.recipes.sample import add_sample_arguments, sample_from_args

    if argv and argv[0] == "sample":
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="imagen",
        description="Generate images from a trained cascade. Other commands: "
        "`imagen train --config FILE`, `imagen config [NAME]`, `imagen export`.",
    )
    add_sample_arguments(parser)
    return sample_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
