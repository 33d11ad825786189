"""The plugins' record views are checked at start-up: a clash, a reserved URL name or a reveal
through anything but a read action on the view's kind stops it, naming the plugin."""

from __future__ import annotations

import pytest

from opsgate.plugin import Plugin, ReadContext, Record, RecordView, Registry
from opsgate.plugins import Enabled, PluginError
from opsgate.web.records import catalogue
from opsgate_demo.plugin import register


def nothing(ctx: ReadContext, ident: str) -> Record | None:
    return None


def check(*views: RecordView) -> None:
    registry = Registry()
    register(registry)
    catalogue([Enabled(Plugin("team", views=views), "test")], registry)


def test_a_valid_view_passes() -> None:
    check(RecordView("customer", nothing, collection="people", reveal="customer.view_pii"))


@pytest.mark.parametrize(
    ("views", "problem"),
    [
        ((RecordView("parcel", nothing),), "unknown target kind 'parcel'"),
        ((RecordView("customer", nothing), RecordView("customer", nothing)), "a second"),
        ((RecordView("customer", nothing, collection="approvals"),), "cannot be used"),
        ((RecordView("customer", nothing, collection="../x"),), "cannot be used"),
        (
            (
                RecordView("customer", nothing, collection="people"),
                RecordView("account", nothing, collection="people"),
            ),
            "is taken",
        ),
        ((RecordView("customer", nothing, reveal="customer.add_note"),), "not a read action"),
        ((RecordView("account", nothing, reveal="customer.view_pii"),), "not a read action"),
        ((RecordView("customer", nothing, reveal="no.such"),), "not a read action"),
        ((RecordView("customer", nothing, template="x.html"),), "no templates"),
    ],
)
def test_a_bad_view_stops_start_up_naming_the_plugin(
    views: tuple[RecordView, ...], problem: str
) -> None:
    with pytest.raises(PluginError, match=problem) as raised:
        check(*views)
    assert raised.value.plugin == "team"
