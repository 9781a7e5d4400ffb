"""Issue 9: sampled values → readings (`ocpp/meter.py`) → state (`state.py`) → per-key
topics (`extensions/state_topics.py`) over every OCPP 1.6 measurand, unit and phase
(table-driven), plus the value shapes real chargers send (see docs/chargers.md for the
sources). Pure: no broker, no sockets.
"""

from __future__ import annotations

import pytest
from ocpp.v16.enums import Measurand, Phase, UnitOfMeasure

from ocpp2mqtt import events as ev
from ocpp2mqtt.extensions import state_topics
from ocpp2mqtt.ocpp import meter
from ocpp2mqtt.ocpp.meter import normalise
from ocpp2mqtt.state import StationState, apply

AT = "2026-11-25T10:00:00Z"


def event_messages(event: ev.Event) -> list[tuple[str, str]]:
    """(sub-topic, payload) a fresh station publishes for `event`."""
    state = StationState(event.station)
    return [(topic, payload) for topic, payload, _ in
            state_topics.render(state, apply(state, event).changes)]


def sample_messages(sampled: list, base: str = "state") -> tuple[list, list]:
    """The per-key messages of one meterValue entry (without last_seen), and its readings."""
    samples = meter.samples([{"sampledValue": sampled}])
    messages = event_messages(ev.MeterReading("cp", AT, connector_id=1, samples=samples))
    assert messages[-1] == ("state/last_seen", AT)
    return messages[:-1], samples[0].readings

MEASURANDS = [m.value for m in Measurand]
PHASES = [p.value for p in Phase]
# The ocpp enum plus the two spellings the 1.6 JSON schema also allows.
UNITS = [u.value for u in UnitOfMeasure] + ["Celcius", "Hertz"]

# Written out by hand (not derived from the code under test).
KEYS = {
    "Current.Export": "current_export",
    "Current.Import": "current_import",
    "Current.Offered": "current_offered",
    "Energy.Active.Export.Register": "energy_active_export_register",
    "Energy.Active.Import.Register": "energy_active_import_register",
    "Energy.Reactive.Export.Register": "energy_reactive_export_register",
    "Energy.Reactive.Import.Register": "energy_reactive_import_register",
    "Energy.Active.Export.Interval": "energy_active_export_interval",
    "Energy.Active.Import.Interval": "energy_active_import_interval",
    "Energy.Reactive.Export.Interval": "energy_reactive_export_interval",
    "Energy.Reactive.Import.Interval": "energy_reactive_import_interval",
    "Frequency": "frequency",
    "Power.Active.Export": "power_active_export",
    "Power.Active.Import": "power_active_import",
    "Power.Factor": "power_factor",
    "Power.Offered": "power_offered",
    "Power.Reactive.Export": "power_reactive_export",
    "Power.Reactive.Import": "power_reactive_import",
    "RPM": "rpm",
    "SoC": "soc",
    "Temperature": "temperature",
    "Voltage": "voltage",
}
PHASE_KEYS = {
    "L1": "l1", "L2": "l2", "L3": "l3", "N": "n",
    "L1-N": "l1_n", "L2-N": "l2_n", "L3-N": "l3_n",
    "L1-L2": "l1_l2", "L2-L3": "l2_l3", "L3-L1": "l3_l1",
}
# Unit sent → (unit published, factor).
SCALED = {"kWh": ("Wh", 1000), "kW": ("W", 1000), "kvarh": ("varh", 1000),
          "kvar": ("var", 1000), "kVA": ("VA", 1000)}
# Unit assumed when the charger omits it, per measurand family.
DEFAULT_UNITS = {
    "Current.Export": "A", "Current.Import": "A", "Current.Offered": "A",
    "Energy.Active.Export.Register": "Wh", "Energy.Active.Import.Register": "Wh",
    "Energy.Reactive.Export.Register": "varh", "Energy.Reactive.Import.Register": "varh",
    "Energy.Active.Export.Interval": "Wh", "Energy.Active.Import.Interval": "Wh",
    "Energy.Reactive.Export.Interval": "varh", "Energy.Reactive.Import.Interval": "varh",
    "Frequency": "Hz", "Power.Active.Export": "W", "Power.Active.Import": "W",
    "Power.Factor": None, "Power.Offered": "W", "Power.Reactive.Export": "var",
    "Power.Reactive.Import": "var", "RPM": None, "SoC": "Percent",
    "Temperature": "Celsius", "Voltage": "V",
}
# How the plain topic is computed from phases when the charger sends no phase-less value.
AGGREGATE = {m: ("sum" if m.startswith(("Energy", "Power")) and m != "Power.Factor"
                 else "max" if m.startswith("Current") else "mean") for m in MEASURANDS}


def test_tables_cover_the_whole_enum():
    assert set(KEYS) == set(MEASURANDS) == set(DEFAULT_UNITS)
    assert set(PHASE_KEYS) == set(PHASES)
    assert {"Wh", "kWh", "W", "kW", "A", "V", "Celsius", "Percent"} <= set(UNITS)


@pytest.mark.parametrize("unit", [*UNITS, None])
@pytest.mark.parametrize("measurand", MEASURANDS)
def test_every_measurand_unit_and_phase(measurand, unit):
    published_unit, factor = SCALED.get(unit, (unit or DEFAULT_UNITS[measurand], 1))
    key = KEYS[measurand]
    for phase in [None, *PHASES]:
        sampled = {"value": "12.5", "measurand": measurand}
        if unit is not None:
            sampled["unit"] = unit
        if phase is not None:
            sampled["phase"] = phase
        reading = normalise(sampled)
        assert reading is not None, sampled
        assert (reading.key, reading.phase, reading.unit, reading.value, reading.signed) == (
            key, PHASE_KEYS.get(phase), published_unit, 12.5 * factor, False), sampled
        text = "12500" if factor == 1000 else "12.5"
        messages, readings = sample_messages([sampled], "state")
        assert readings == [reading]
        if phase is None:
            expected = [(f"state/{key}", text)]
        elif phase == "N":  # the neutral never feeds the plain topic
            expected = [(f"state/{key}/n", text)]
        else:
            expected = [(f"state/{key}/{PHASE_KEYS[phase]}", text), (f"state/{key}", text)]
        assert messages == expected, sampled


@pytest.mark.parametrize("measurand", MEASURANDS)
def test_plain_topic_aggregates_phases(measurand):
    key = KEYS[measurand]
    sampled = [{"value": v, "measurand": measurand, "phase": p}
               for v, p in (("1", "L1"), ("2", "L2"), ("6", "L3"), ("100", "N"))]
    messages, _ = sample_messages(sampled, "state")
    assert messages[:4] == [(f"state/{key}/l1", "1"), (f"state/{key}/l2", "2"),
                            (f"state/{key}/l3", "6"), (f"state/{key}/n", "100")]
    expected = {"sum": "9", "max": "6", "mean": "3"}[AGGREGATE[measurand]]
    assert messages[4:] == [(f"state/{key}", expected)]


@pytest.mark.parametrize("measurand", MEASURANDS)
def test_phase_less_value_wins_over_the_aggregate(measurand):
    """go-e sends per-phase powers and a total (evcc-io/evcc #6735): the total is published."""
    key = KEYS[measurand]
    sampled = [{"value": "1", "measurand": measurand, "phase": "L1"},
               {"value": "2", "measurand": measurand, "phase": "L2"},
               {"value": "30", "measurand": measurand}]
    messages, _ = sample_messages(sampled, "state")
    assert [m for m in messages if m[0] == f"state/{key}"] == [(f"state/{key}", "30")]


def test_missing_measurand_means_energy_active_import_register():
    reading = normalise({"value": "1234"})
    assert (reading.key, reading.unit, reading.value) == (
        "energy_active_import_register", "Wh", 1234.0)


# (value sent, unit, measurand, payload published, source)
REAL_VALUES = [
    ("15174.00", "Wh", "Energy.Active.Import.Register", "15174",
     "Grizzl-E, lbbrhzn/ocpp #442"),
    ("7483.98", "W", "Power.Active.Import", "7483.98", "Grizzl-E, lbbrhzn/ocpp #442"),
    ("234.60", "V", "Voltage", "234.6", "ABB Terra AC, lbbrhzn/ocpp #169"),
    ("600007.0", "Wh", "Energy.Active.Import.Register", "600007",
     "Wallbox Pulsar Pro, evcc-io/evcc #22087"),
    ("107859.3", "Wh", "Energy.Active.Import.Register", "107859.3",
     "Wallbox, lbbrhzn/ocpp #1742"),
    ("755295.01", "Wh", "Energy.Active.Import.Register", "755295.01",
     "go-e, evcc-io/evcc #6735"),
    ("232.519", "V", "Voltage", "232.519", "evcc-io/evcc #27686"),
    ("3.5", "kW", "Power.Active.Import", "3500", "Injet Sonic, lbbrhzn/ocpp #1311"),
    ("3.4", "kW", "Power.Active.Import", "3400", "evcc-io/evcc #19420"),
    ("3.43", "kW", "Power.Active.Import", "3430", "evcc-io/evcc #16966"),
    ("58.57", "kWh", "Energy.Active.Import.Register", "58570",
     "Entratek Power Dot Pro, evcc-io/evcc #15612"),
    ("5.146", "kWh", "Energy.Active.Import.Register", "5146",
     "sap-labs-france/ev-dashboard #1817"),
    ("0.00", "kWh", "Energy.Active.Import.Register", "0", "Huawei, lbbrhzn/ocpp #1144"),
    # OpenEVSE sends JSON numbers instead of strings (lbbrhzn/ocpp #210).
    (604.213, "Wh", "Energy.Active.Import.Register", "604.213", "OpenEVSE, lbbrhzn/ocpp #210"),
    (0, "W", "Power.Active.Import", "0", "OpenEVSE, lbbrhzn/ocpp #210"),
    # A power measurand labelled Wh is passed through as sent (TEISON, lbbrhzn/ocpp #1617).
    ("0.0", "Wh", "Power.Active.Export", "0", "TEISON, lbbrhzn/ocpp #1617"),
    # kWh with three decimals becomes a whole number of Wh, without float noise: chargers
    # send three decimals (ev-dashboard #1817 above); a simulator even sent the float noise
    # itself (road-labs/chargestation-one #61).
    ("1.001", "kWh", "Energy.Active.Import.Register", "1001", "3-decimal kWh"),
    ("1.003", "kWh", "Energy.Active.Import.Register", "1003", "3-decimal kWh"),
    ("12.345", "kWh", "Energy.Active.Import.Register", "12345", "3-decimal kWh"),
    ("1.6250000000000002", "kWh", "Energy.Active.Import.Register", "1625",
     "road-labs/chargestation-one #61"),
]


@pytest.mark.parametrize(("value", "unit", "measurand", "published", "source"), REAL_VALUES,
                         ids=[f"{r[0]}{r[1]}" for r in REAL_VALUES])
def test_real_world_values(value, unit, measurand, published, source):
    sampled = {"value": value, "unit": unit, "measurand": measurand}
    messages, _ = sample_messages([sampled], "state")
    assert messages == [(f"state/{KEYS[measurand]}", published)], source


def test_three_decimal_kwh_never_publishes_a_trailing_point_zero():
    """Every kWh value with up to three decimals maps to a whole Wh count, printed as one."""
    wrong = []
    for milli in range(0, 100_000, 7):
        text = f"{milli // 1000}.{milli % 1000:03d}"
        messages, _ = sample_messages([{"value": text, "unit": "kWh"}], "state")
        if messages != [("state/energy_active_import_register", str(milli))]:
            wrong.append((text, messages[0][1]))
    assert not wrong, f"{len(wrong)} values, e.g. {wrong[:5]}"


@pytest.mark.parametrize("value", ["", "nan", "NaN", "inf", "-inf", "n/a", None])
def test_unusable_values_are_dropped(value):
    assert normalise({"value": value, "measurand": "Voltage"}) is None
    assert sample_messages([{"value": value, "measurand": "Voltage"}], "state") == ([], [])


def test_unknown_measurand_is_dropped():
    assert normalise({"value": "1", "measurand": "Current.Import.L1"}) is None


# --- SignedData --------------------------------------------------------------------------

KEBA_OCMF = (  # KEBA KCP30 record from the test data of https://github.com/paul-ww/pyocmf
    'OCMF|{"FV":"1.0","GI":"KEBA_KCP30","GS":"17619300","GV":"2.8.5","PG":"T32","IS":false,'
    '"IL":"NONE","IF":["RFID_NONE","OCPP_NONE","ISO15118_NONE","PLMN_NONE"],"IT":"NONE",'
    '"ID":"","RD":[{"TM":"2019-08-13T10:03:15,000+0000 I","TX":"B","EF":"","ST":"G",'
    '"RV":0.2596,"RI":"1-b:1.8.0","RU":"kWh"},{"TM":"2019-08-13T10:03:36,000+0000 R",'
    '"TX":"E","EF":"","ST":"G","RV":0.2597,"RI":"1-b:1.8.0","RU":"kWh"}]}|'
    '{"SD":"304502200E2F107C987A300AC1695CA89EA149A8CDFA16188AF0A33EE64B67964AA943F9'
    '022100889A72B6D65364BEA8562E7F6A0253157ACFF84FE4929A93B5964D23C4265699"}'
)
ALFEN_SIGNED = (  # Alfen signed-data format, as in https://github.com/evbox/station-simulator/pull/100
    "AP;0;3;ALCV3ABBBISHMA2RYEGAZE3HV5YQBQRQAEHAR2MN;BIHEIWSHAAA2W2V7OYYDCNQAAAFACRC2I4ADGAETI4"
    "AAAABAOOJYUAGMXEGV4AIAAEEAB7Y6AAO3EAIAAAAAAABQGQ2UINJZGZATGMJTGQ4DAAAAAAAAAACXAAAABKYAAAAA"
    "====;R7KGQ3CEYTZI6AWKPOA42MXJTGBW27EUE2E6X7J77J5WMQXPSOM3E27NMVM2D77DPTMO3YACIPTRI===;"
)
# The OCA signed-meter-values envelope for 1.6, as sent in
# https://github.com/solidstudiosh/ocpp-virtual-charge-point/pull/63 (placeholders as there).
OCA_ENVELOPE = ('{"signedMeterData":"<base64 OCMF>","encodingMethod":"OCMF",'
                '"publicKey":"<base64>"}')


@pytest.mark.parametrize("signed", [KEBA_OCMF, ALFEN_SIGNED, OCA_ENVELOPE, "", "12.5"],
                         ids=["keba-ocmf", "alfen", "oca-envelope", "empty", "number-like"])
@pytest.mark.parametrize(("extra", "topic"), [
    ({}, "state/energy_active_import_register/signed_data"),
    ({"measurand": "Energy.Active.Import.Register", "unit": "kWh"},
     "state/energy_active_import_register/signed_data"),
    ({"measurand": "Energy.Active.Export.Register", "phase": "L1"},
     "state/energy_active_export_register/l1/signed_data"),
    ({"measurand": "Power.Active.Import", "phase": "L2-N"},
     "state/power_active_import/l2_n/signed_data"),
])
def test_signed_data_is_untouched(signed, extra, topic):
    sampled = {"value": signed, "format": "SignedData", "context": "Transaction.End", **extra}
    reading = normalise(sampled)
    assert reading.signed and reading.value == signed and reading.unit is None
    messages, _ = sample_messages([sampled], "state")
    assert messages == [(topic, signed)]  # same text, and no numeric register topic


def test_signed_and_raw_values_side_by_side():
    """Raw register and signed record in one entry (solidstudiosh/ocpp-virtual-charge-point #63)."""
    sampled = [{"value": "259.6", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
               {"value": KEBA_OCMF, "format": "SignedData", "context": "Sample.Periodic"}]
    messages, _ = sample_messages(sampled, "state")
    assert messages == [("state/energy_active_import_register", "259.6"),
                        ("state/energy_active_import_register/signed_data", KEBA_OCMF)]


# --- Real-world shapes the mapping gets wrong today (see the report of issue 9) -------------


def test_transaction_begin_value_does_not_override_the_live_register():
    """Growatt THOR (lbbrhzn/ocpp #1466, #1709, #1838; evcc-io/evcc #33256) and the Project EV
    charger (evcc-io/evcc #15768) send the live register and then the transaction's start
    value in the same entry; the retained plain topic must end with the live value."""
    sampled = [
        {"value": "163630", "context": "Sample.Periodic", "format": "Raw",
         "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "157440", "context": "Transaction.Begin", "format": "Raw",
         "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
    ]
    messages, _ = sample_messages(sampled, "state")
    plain = [p for t, p in messages if t == "state/energy_active_import_register"]
    assert plain and plain[-1] == "163630", messages


def test_sampled_value_in_amps_without_measurand_is_not_energy():
    """Alfen Eve Pro (lbbrhzn/ocpp #361) sends amps without a measurand; publishing them as
    the energy register (the OCPP default measurand) would corrupt the kWh counter."""
    for sampled in ({"value": "15.630", "context": "Sample.Periodic", "unit": "A"},
                    {"value": "16.000", "context": "CurrentMax", "unit": "A"}):
        reading = normalise(sampled)
        assert reading is None or reading.key != "energy_active_import_register", sampled


def test_one_sampled_value_per_entry_aggregates_across_entries():
    """HKW.WB07 (evcc-io/evcc #27686) sends every sampled value as its own meterValue entry,
    all with one timestamp: the plain current is still the maximum of the phases, not the
    last phase sent. (Values other than the report's zeros, to tell the cases apart.)"""
    ts = "2026-02-25T09:13:00.458Z"
    entries = [{"timestamp": ts, "sampledValue": [
        {"value": v, "measurand": "Current.Import", "phase": p, "unit": "A"}]}
        for v, p in (("16.1", "L1"), ("15.9", "L2"), ("6.2", "L3"))]
    event = ev.MeterReading("HKW.WB07", "2026-11-25T10:00:00Z", connector_id=1,
                            transaction_id="0", samples=meter.samples(entries))
    messages = event_messages(event)
    plain = [p for t, p in messages if t == "state/current_import"]
    assert plain and plain[-1] == "16.1", messages


def test_charger_clock_goes_to_meter_timestamp_gateway_clock_to_last_seen():
    """A 1970 timestamp (MicroOcpp #311, #354) is published as the charger's, never as ours."""
    event = ev.MeterReading("cp", "2026-11-25T10:00:00Z", connector_id=1, samples=meter.samples([
        {"timestamp": "1970-01-01T00:00:12.500Z",
         "sampledValue": [{"value": "1234", "measurand": "Energy.Active.Import.Register"}]}]))
    messages = dict(event_messages(event))
    assert messages["state/meter_timestamp"] == "1970-01-01T00:00:12.500Z"
    assert messages["state/last_seen"] == "2026-11-25T10:00:00Z"
    assert messages["state/energy_active_import_register"] == "1234"


def test_normalise_remembers_descriptions_not_values_and_stays_bounded():
    from ocpp2mqtt.ocpp import meter
    first = normalise({"value": "1.5", "measurand": "Power.Active.Import", "unit": "kW",
                       "phase": "L1", "context": "Sample.Periodic"})
    second = normalise({"value": "2.25", "measurand": "Power.Active.Import", "unit": "kW",
                        "phase": "L1", "context": "Sample.Periodic"})
    assert (first.key, first.phase, first.value, first.unit) == (
        "power_active_import", "l1", 1500.0, "W")
    assert (second.value, second.unit, second.context) == (2250.0, "W", "Sample.Periodic")
    # a description that is not text (no schema lets one through) is unusable, not a crash
    assert normalise({"value": "1", "measurand": "Voltage", "phase": ["L1"]}) is None
    for n in range(5000):  # a charger inventing a new context for every value
        normalise({"value": "1", "measurand": "Voltage", "context": f"c{n}"})
    assert len(meter._descriptions) <= 4097
