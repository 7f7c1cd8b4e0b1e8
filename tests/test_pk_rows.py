"""Rows by primary key through a statement compiled once (`visual_reco.pk_rows`), against the
ORM's own read of the same rows, on real Postgres."""

import numpy as np
import pytest
from django.db import connection
from django.db.models.query_utils import DeferredAttribute
from django.test.utils import CaptureQueriesContext
from pgvector import HalfVector

from tests.testapp.models import Item
from visual_reco import pk_rows
from visual_reco.pk_rows import holds_every_row, rows_by_pk

pytestmark = pytest.mark.django_db
DIMS = 2048


@pytest.fixture
def items():
    rng = np.random.default_rng(5)
    return Item.objects.bulk_create([
        Item(name=f"i{i}", category=f"c{i % 3}", in_stock=i % 2 == 0, photo=f"items/{i}.jpg",
             embedding=HalfVector(rng.random(DIMS)), embedding_colour=HalfVector(rng.random(112)),
             embedding_status="ready")
        for i in range(12)])


def _values(row, names):
    return {name: row.__dict__.get(name, DeferredAttribute) for name in names}


def test_every_row_queryset_is_told_apart_without_sql():
    assert holds_every_row(Item.objects.all())
    assert holds_every_row(Item._default_manager.all().order_by("name"))
    assert not holds_every_row(Item.objects.filter(in_stock=True))
    assert not holds_every_row(Item.objects.all()[:5])
    assert not holds_every_row(Item.objects.annotate(n=Item.objects.values("pk")[:1]))


def test_same_rows_and_values_as_the_orm_in_one_kept_statement(items):
    pk_rows._STATEMENTS.clear()
    wanted = [items[7].pk, items[2].pk, items[11].pk, 10 ** 9]  # the last one: no such row
    names = [field.attname for field in Item._meta.concrete_fields]
    orm = {row.pk: row for row in Item.objects.filter(pk__in=wanted).defer("embedding")}
    with CaptureQueriesContext(connection) as first:
        found = rows_by_pk(Item.objects.all(), wanted, ["embedding"])
    assert len(first.captured_queries) == 1
    assert len(pk_rows._STATEMENTS) == 1
    assert sorted(row.pk for row in found) == sorted(orm)
    for row in found:
        assert type(row) is Item and not row._state.adding and row._state.db == "default"
        assert "embedding" not in row.__dict__  # deferred, as asked
        assert _values(row, names) == _values(orm[row.pk], names)
        assert row.embedding_colour == orm[row.pk].embedding_colour
        assert row.photo.name == orm[row.pk].photo.name
    with CaptureQueriesContext(connection) as second:
        again = rows_by_pk(Item.objects.all(), list(reversed(wanted)), ["embedding"])
    assert len(second.captured_queries) == 1 and len(pk_rows._STATEMENTS) == 1
    assert second.captured_queries[0]["sql"].split(" WHERE ")[0] == \
        first.captured_queries[0]["sql"].split(" WHERE ")[0]
    assert sorted(row.pk for row in again) == sorted(orm)
    # Other deferred columns: a statement of their own.
    rows_by_pk(Item.objects.all(), wanted)
    assert len(pk_rows._STATEMENTS) == 2


def test_a_filtered_queryset_keeps_its_filter(items):
    pk_rows._STATEMENTS.clear()
    wanted = [item.pk for item in items]
    found = rows_by_pk(Item.objects.filter(in_stock=True), wanted, ["embedding"])
    assert sorted(row.pk for row in found) == sorted(item.pk for item in items if item.in_stock)
    assert all("embedding" not in row.__dict__ for row in found)
    values = rows_by_pk(Item.objects.values("pk", "name"), wanted[:2])
    assert sorted(value["pk"] for value in values) == sorted(wanted[:2])
    assert not pk_rows._STATEMENTS  # neither was kept


def test_no_keys_no_query(items):
    with CaptureQueriesContext(connection) as queries:
        assert rows_by_pk(Item.objects.all(), []) == []
    assert not queries.captured_queries
