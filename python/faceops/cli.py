"""The `faceops` command: `faceops train`, `faceops eval`, `faceops export`,
`faceops selfcheck`, `faceops caffe`, `faceops --version`."""

import argparse
import sys

USAGE = """usage: faceops [--version] COMMAND [options]

commands:
  train      train a face embedding with faceops losses, verify it, export it to ONNX
             (without --data: a built-in synthetic identity set, {time})
  eval       verify a trained run or an exported ONNX model on an LFW-format pairs file
  export     write the ONNX model of a trained run directory
  selfcheck  run every op on a tiny batch and check its gradient
  caffe      install or uninstall the faceops layers in a Caffe source tree

`faceops COMMAND --help` lists a command's options.
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every command's --help: each option's default shown, except where there is none
    to show (the help says in words what happens) or the option is a flag."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _usage():
    from faceops.driver.train import DEFAULT_RUN_TIME

    return USAGE.format(time=DEFAULT_RUN_TIME)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        import faceops

        print(f"faceops {faceops.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "train":
        from faceops.driver import train

        return train.main(rest)
    if command == "eval":
        from faceops.driver import evaluate

        return evaluate.main(rest)
    if command == "export":
        from faceops.driver import export

        return export.main(rest)
    if command == "selfcheck":
        from faceops import selfcheck

        return selfcheck.main(rest)
    if command == "caffe":
        from faceops.caffe.__main__ import main as caffe_main

        return caffe_main(rest)
    print(f"faceops: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
