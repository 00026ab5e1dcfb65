"""schemathesis hooks: the rules of orderflow's APIs that no OpenAPI document can state.

Loaded by scripts/api-fuzz through SCHEMATHESIS_HOOKS. Each hook names the rule it stands for.
The rewrites keep a value valid by the schema (a negative case stays negative); the forgiven
failures are exactly the answers the rule gives, matched on the error's code and details, so
that any other answer to the same request is still checked.
"""

import re
import uuid

import schemathesis

VISIBLE_ASCII = re.compile(r"^[!-~]{1,255}$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# The path parameters every document declares `format: uuid`.
UUID_PATH_PARAMETERS = {"id", "order_id"}
CONSISTENCY_TOKEN = re.compile(r"^(customers|inventory|orders|payments):[0-9]{1,19}$")
# Opaque cursors: issued by the API, any other value of the right alphabet is refused.
CURSORS = {"cursor", "after"}


@schemathesis.hook
def before_call(context, case, **kwargs):
    headers = case.headers or {}
    # An Idempotency-Key names one intent: a client makes a new key for each new command. A
    # generated client reuses the few keys Hypothesis likes ("0") across different bodies,
    # which the service rightly refuses (422 idempotency_key_reused).
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and VISIBLE_ASCII.match(key):
        headers["Idempotency-Key"] = uuid.uuid4().hex
    # `min_position` is a token a command answered. A made-up position ahead of the log waits
    # the read's whole wait and then answers 503 `not_caught_up` (documented, with
    # Retry-After): a valid token is sent as the start of its service's log instead, which every
    # projection has applied, so the fuzzing budget goes to the parameters around it.
    query = case.query or {}
    token = query.get("min_position")
    if isinstance(token, str) and CONSISTENCY_TOKEN.match(token):
        query["min_position"] = token.split(":")[0] + ":0"
    # The simulated payment provider's settings change every later payment: a generated
    # minute of latency, or the provider marked down, would make the rest of the run wait past
    # the fuzzer's own timeout or answer 503 `gateway_unavailable`, both documented. The
    # settings stay valid, only mild.
    if case.operation.path == "/v1/gateway" and case.method.upper() == "PUT":
        body = case.body
        if isinstance(body, dict):
            latency = body.get("latency_ms")
            # An integer, or one written `45000.0` (also valid: JSON Schema's integers).
            whole = isinstance(latency, int) or (isinstance(latency, float) and latency.is_integer())
            if whole and not isinstance(latency, bool) and 0 <= latency <= 60_000:
                body["latency_ms"] = min(int(latency), 50)
            if body.get("unavailable") is True:
                body["unavailable"] = False
    # An order names each product on one line (the document says so in words; JSON Schema's
    # uniqueItems compares whole lines, not their product_id): keep each product's first line.
    if case.operation.path == "/v1/orders" and case.method.upper() == "POST":
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("lines"), list):
            seen, lines = set(), []
            for line in body["lines"]:
                product = line.get("product_id") if isinstance(line, dict) else None
                if isinstance(product, str):
                    if product in seen:
                        continue
                    seen.add(product)
                lines.append(line)
            if lines:
                body["lines"] = lines


def _error(response):
    try:
        return response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """False drops the failure: only for the two rules below."""
    if failure.code != "ST202" or response.status_code != 400:
        return True
    error = _error(response)
    if not error or error.get("code") != "bad_request":
        return True
    details = error.get("details") or {}
    query = case.query or {}
    # Stateful runs fill a path's id from an earlier answer by a link, a nullable field among
    # them (an order's `payment_id` before its payment): `None` is then sent as the id. Such a
    # request is not valid by the schema (`format: uuid`), whatever the link made of it.
    field = details.get("field") or details.get("parameter")
    path = case.path_parameters or {}
    if field in UUID_PATH_PARAMETERS and field in path:
        value = path[field]
        # The link's null arrives as Python's None, sent as the text "None".
        if value is None or (isinstance(value, str) and not UUID.match(value)):
            return False
    # Parameters each valid alone but not together: two that exclude each other (`as_of` and
    # `at_position`), a range written backwards (`from` after `to`), a cursor of another
    # `sort`. The service names them all in `details.parameters`; forgiven when every one of
    # them is in the request.
    together = details.get("parameters")
    if isinstance(together, list) and len(together) >= 2 and all(name in query for name in together):
        return False
    # A cursor is an opaque token the API issued: no schema says which strings are cursors.
    if details.get("parameter") in CURSORS and details.get("parameter") in query:
        return False
    return True
