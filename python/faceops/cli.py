"""The `faceops` command: `faceops train`, `faceops export`, `faceops selfcheck`, `faceops caffe`."""

import sys

USAGE = """usage: faceops COMMAND [options]

commands:
  train      train a face embedding with faceops losses, evaluate it, export ONNX
             (without --data: a built-in synthetic identity set, about a minute)
  export     write the ONNX model of a trained run directory
  selfcheck  run every op on a tiny batch and check its gradient
  caffe      install or uninstall the faceops layers in a Caffe source tree

`faceops COMMAND --help` lists a command's options.
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from faceops.driver import train

        return train.main(rest)
    if command == "export":
        from faceops.driver import export

        return export.main(rest)
    if command == "selfcheck":
        from faceops import selfcheck

        return selfcheck.main()
    if command == "caffe":
        from faceops.caffe.__main__ import main as caffe_main

        return caffe_main(rest)
    print(f"faceops: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
