"""Command line: `ocpp2mqtt [run]` starts the gateway; configuration comes from the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import logging.handlers
import signal
import sys
from pathlib import Path

from ocpp2mqtt import __version__
from ocpp2mqtt.config import ConfigError, Settings, load_settings
from ocpp2mqtt.store.sqlite import StoreTooNew

log = logging.getLogger("ocpp2mqtt")


def setup_logging(settings: Settings) -> None:
    formatter = logging.Formatter(settings.log_format, settings.log_date_format)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if settings.log_file:
        Path(settings.log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                settings.log_file,
                maxBytes=settings.log_max_size,
                backupCount=settings.log_backup_count,
                encoding="utf-8",
            )
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        # websockets logs handshake headers at DEBUG: never a charger's credentials.
        handler.addFilter(_drop_credentials)
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # Library chatter stays at WARNING unless we debug.
    for name in ("websockets",):
        logging.getLogger(name).setLevel(
            logging.DEBUG if settings.log_level == "DEBUG" else logging.WARNING
        )


def _drop_credentials(record: logging.LogRecord) -> bool:
    return "authorization:" not in record.getMessage().lower()


async def run_gateway(settings: Settings) -> None:
    from ocpp2mqtt.broker import EmbeddedBroker, broker_reachable
    from ocpp2mqtt.gateway import Gateway

    broker = None
    if (
        settings.embedded_broker == "auto"
        and settings.mqtt_transport == "tcp"
        and settings.mqtt_hostname in ("localhost", "127.0.0.1")
        and settings.mqtt_port == 1883
        and not broker_reachable("127.0.0.1", 1883)
    ):
        broker = EmbeddedBroker(1883)
        if not await asyncio.to_thread(broker.start):
            broker = None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with Gateway(settings):
            # Long-lived start-up objects need no more collecting, and rarer full
            # collections keep a busy gateway's latency free of multi-ms pauses.
            gc.freeze()
            gc.set_threshold(10_000, 20, 100)
            log.info("ocpp2mqtt %s running; SIGTERM or Ctrl-C stops it gracefully", __version__)
            await stop.wait()
            log.info("shutting down")
    finally:
        if broker is not None:
            broker.stop()


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocpp2mqtt",
        description="Gateway between OCPP charge points (1.6J, 2.0.1, 2.1) and MQTT. "
        "Configuration comes from environment variables or a .env file (see README).",
    )
    parser.add_argument("--version", action="version", version=f"ocpp2mqtt {__version__}")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the gateway (the default)")
    sub.add_parser("check-config", help="validate the configuration and print it (no secrets)")
    from ocpp2mqtt import simulator

    simulator.add_arguments(sub.add_parser(
        "simulate", help="simulate OCPP charge points (1.6, 2.0.1 or 2.1)"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        from ocpp2mqtt import simulator

        return simulator.run(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"ocpp2mqtt: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        for name, value in settings.redacted().items():
            print(f"{name}={value}")
        return 0
    setup_logging(settings)
    loop_kind = _install_uvloop()
    log.debug("event loop: %s", loop_kind)
    try:
        asyncio.run(run_gateway(settings))
    except ConfigError as exc:  # e.g. an unreadable OCPP_BASIC_AUTH_FILE
        print(f"ocpp2mqtt: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except (OSError, StoreTooNew) as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
