"""Property-based requests against the served OpenAPI schema (schemathesis): whatever a
client sends to any operation, the answer is never a server error."""

import numpy as np
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings

from tests.testapp.models import Item
from visual_reco.models import EmbeddingStatus


@pytest.fixture
def api_schema(db):
    """The schema the app serves, with two embedded items for the ids to hit. Requests run
    in the test's transaction, so the connection must outlive each one (as with Django's
    test client)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    rng = np.random.default_rng(0)
    for pk in (1, 2):
        Item.objects.create(id=pk, name=f"fuzz {pk}", category="cups")
        Item.objects.filter(pk=pk).update(embedding=rng.random(2048),
                                          embedding_status=EmbeddingStatus.READY)
    yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def test_no_input_gets_a_server_error(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {
        "GET /api/visual-reco/products/{id}/similar/", "POST /api/visual-reco/search/"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def answers_without_a_server_error(case):
            response = case.call()
            assert response.status_code < 500, (case.method, case.formatted_path, case.query,
                                                response.status_code, response.text[:300])

        answers_without_a_server_error()
