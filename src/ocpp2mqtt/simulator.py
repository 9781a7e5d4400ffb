"""`ocpp2mqtt simulate`: OCPP 1.6 charge point simulator (issue 7). Placeholder."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="ws://127.0.0.1:3000", help="gateway URL")
    parser.add_argument("--stations", type=int, default=1, help="number of charge points")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between meter values")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("simulator not implemented yet")
