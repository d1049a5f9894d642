"""The HTTP service end to end: a real `bentoml serve` on a free loopback port, stopped by pid."""

import base64
import io
import re
from datetime import datetime, timedelta, timezone

import httpx
import polars as pl
from conftest import wait_for_sweep
from PIL import Image

KEY = "test-key"  # conftest.SERVICE_KEY: the key the server fixture starts the service with


def png(width=32, height=32, mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_good_price_request(server):
    client, tables = server
    spu = tables["orders"]["spu_id"][0]
    response = client.post("/price", json={"items": [{"spu_id": spu, "quantity": 10},
                                                     {"spu_id": "NEW", "title": "Aurora QQ-1 Gold Watch",
                                                      "image_base64": png()}]})
    assert response.status_code == 200, response.text
    known, new = response.json()
    assert known["spu_id"] == spu and known["value_low"] < known["value"] < known["value_high"]
    assert abs(known["pledge_unit_price"] - known["value"] * (1 - known["haircut"])) < 1e-9
    assert known["decision"] in ("accept", "review", "reject") and len(known["comparables"]) == 3
    assert new["head"] == "cold" and new["decision"] == "review" and new["error"] is None


def test_a_new_spus_category_and_brand_reach_the_model(server):
    client, _ = server
    item = {"spu_id": "NEW", "title": "QQ-1 Leather Watch"}
    plain, given = client.post("/price", json={"items": [item, {**item, "category": "lamp", "brand": "Basix"}]}).json()
    assert given["category"] == "lamp" and plain["category"] != "lamp" and given["value"] != plain["value"]
    response = client.post("/price", json={"items": [{**item, "brand": 7}]})
    assert response.status_code in (400, 422) and "brand" in response.text


def test_unknown_spu_is_404_with_the_id(server):
    client, _ = server
    response = client.post("/price", json={"items": [{"spu_id": "NO-SUCH-SPU"}]})
    assert response.status_code == 404 and "NO-SUCH-SPU" in response.text


def test_corrupt_image_is_400(server):
    client, _ = server
    bad = base64.b64encode(b"\x89PNG\r\n\x1a\n this is not a png").decode()
    response = client.post("/price", json={"items": [{"spu_id": "N", "title": "mug", "image_base64": bad}]})
    assert response.status_code == 400 and "not a readable image" in response.text
    assert response.json()["error"].startswith("image_base64: ")  # the field as sent, not the model's "images"
    response = client.post("/price", json={"items": [{"spu_id": "N", "title": "mug", "image_base64": "%%%"}]})
    assert response.status_code == 400 and "base64" in response.text


def test_50_megapixel_image_refused(server):
    client, _ = server
    response = client.post("/price", json={"items": [{"spu_id": "N", "title": "mug",
                                                      "image_base64": png(10_000, 5_000, "1")}]})
    assert response.status_code in (400, 413) and "pixel limit" in response.text


def test_missing_or_wrong_key_is_401_but_health_is_open(server):
    client, _ = server
    base = str(client.base_url)
    assert httpx.post(f"{base}/price", json={"items": [{"spu_id": "x"}]}).status_code == 401
    assert httpx.post(f"{base}/price", json={"items": [{"spu_id": "x"}]},
                      headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(f"{base}/healthz").status_code == 200 and httpx.get(f"{base}/readyz").status_code == 200


def test_batch_with_one_bad_item_answers_the_others(server):
    client, tables = server
    good = tables["spus"]["spu_id"].to_list()[:3]
    items = [{"spu_id": good[0]}, {"spu_id": "UNKNOWN-1"}, {"spu_id": good[1]}, {"spu_id": good[2]}]
    response = client.post("/price", json={"items": items})
    assert response.status_code == 200
    answers = response.json()
    assert [a["error"] is None for a in answers] == [True, False, True, True]
    assert "UNKNOWN-1" in answers[1]["error"] and all(a["value"] for i, a in enumerate(answers) if i != 1)


def test_bad_fields_are_4xx_naming_them(server):
    client, _ = server
    response = client.post("/price", json={"items": [{"spu_id": "x", "quantity": -5}]})
    assert response.status_code in (400, 422) and "quantity" in response.text
    response = client.post("/price", json={"items": [{"spu_id": "x"}] * 300})
    assert response.status_code == 413 and "at most" in response.text
    response = client.post("/price", content=b"x" * (40 * 1024 * 1024), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_similar_admit_sweep_and_health(server):
    client, tables = server
    title = tables["spus"]["title"][5]
    hits = client.post("/similar", json={"query": {"title": title}, "k": 3}).json()
    assert hits[0]["spu_id"] == tables["spus"]["spu_id"][5] and len(hits) == 3
    # a catalogue image by the URL that serves it, never its path on the server
    assert all("image" not in h and h["image_url"] in (None, f"/catalog/{h['spu_id']}/image") for h in hits)
    assert any(h["image_url"] for h in hits)
    admit = client.post("/admit", json={"items": [{"spu_id": tables["spus"]["spu_id"][0]}]}).json()
    assert set(admit[0]) >= {"decision", "reasons", "pledge_unit_price"}
    started = client.post("/sweep", json={})
    assert started.status_code == 200, started.text
    status = wait_for_sweep(client, started.json()["sweep_id"])
    assert status["n_positions"] == tables["positions"].height
    position = tables["positions"]["position_id"][0]
    health = client.get(f"/positions/{position}/health").json()
    assert health["latest"]["action"] in ("ok", "watch", "top-up", "liquidate") and len(health["history"]) == 1
    assert client.get("/positions/NOPE/health").status_code == 404
    assert client.get("/sweeps/sweep-1999-01-01").status_code == 404
    for far in ("2999-01-01", "1900-01-01"):  # a future or pre-market day would store a sweep that misleads
        refused = client.post("/sweep", json={"as_of": far})
        assert refused.status_code == 422 and "as_of" in refused.text, refused.text
    assert client.get("/metrics").status_code == 200


def test_request_metrics_count_routes_with_ids_under_their_template(server):
    # BentoML labels by raw path: every position id, and every path a client makes up, was a new series
    client, tables = server
    ids = tables["positions"]["position_id"].to_list()[:3]
    for position in ids:
        client.get(f"/positions/{position}/health")
    client.get("/no/such-route-7f3a")
    metrics = client.get("/metrics").text
    endpoints = set(re.findall(r'endpoint="([^"]*)"', metrics))
    assert "/positions/{position_id}/health" in endpoints and "/price" in endpoints, sorted(endpoints)
    assert not any(position in metrics for position in ids) and "such-route" not in metrics
    assert "{unmatched}" in endpoints


def test_route_templates():
    from serving.metrics import RouteLabels
    from serving.service import PledgeService

    route_template = RouteLabels(PledgeService.mount_apps)  # the labels come from the service's own routes

    assert route_template("/price", frozenset({"/price"})) == "/price"
    assert route_template("/positions/P1/health") == "/positions/{position_id}/health"
    assert route_template("/positions/changes") == "/positions/changes"
    assert route_template("/sweeps/sweep-2024-01-01") == "/sweeps/{sweep_id}"
    assert route_template("/sweeps/sweep-2024-01-01/report") == "/sweeps/{sweep_id}/report"
    assert route_template("/catalog/A1/image") == "/catalog/{spu_id}/image"
    assert route_template("/desk/desk.js") == "/desk/{file}"
    assert route_template("/metrics") == "/metrics"
    assert route_template("/positions/P1/health/../../x") == "{unmatched}"
    assert route_template("/price") == "{unmatched}"  # not among this service's API routes


def test_desk_page_is_open_but_its_data_needs_the_key(server):
    client, tables = server
    page = httpx.get(f"{client.base_url}/desk/", timeout=10)
    assert page.status_code == 200 and "Pledge desk" in page.text
    assert httpx.get(f"{client.base_url}/catalog/{tables['spus']['spu_id'][0]}/image", timeout=10).status_code == 401
    with_image = tables["spus"].filter(tables["spus"]["images"].list.len() > 0)["spu_id"][0]
    thumb = client.get(f"/catalog/{with_image}/image")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    missing = client.get("/catalog/NO-SUCH-SPU/image")
    assert missing.status_code == 404 and "NO-SUCH-SPU" in missing.text


def test_sweep_status_is_shared_by_both_workers_and_one_request_runs_it(server):
    """Two worker processes serve this service: whichever answers a GET must know a sweep the other
    started, and concurrent POSTs for one date start one run, never a failed second one."""
    from concurrent.futures import ThreadPoolExecutor

    client, tables = server
    market_days = sorted(tables["orders"]["ordered_at"].dt.date().unique().to_list())
    as_of = market_days[-3].isoformat()  # a day no other test sweeps
    with ThreadPoolExecutor(10) as pool:
        posts = list(pool.map(lambda _: client.post("/sweep", json={"as_of": as_of}), range(10)))
    assert all(p.status_code == 200 for p in posts), [p.text for p in posts]
    sweep_id = posts[0].json()["sweep_id"]
    assert {p.json()["sweep_id"] for p in posts} == {sweep_id}
    with ThreadPoolExecutor(4) as pool:
        polls = list(pool.map(lambda _: client.get(f"/sweeps/{sweep_id}"), range(20)))
    assert [p.status_code for p in polls] == [200] * 20, [p.text for p in polls if p.status_code != 200]
    assert all(p.json()["status"] in ("running", "waiting", "completed") for p in polls)
    assert wait_for_sweep(client, sweep_id)["status"] == "completed"


def test_every_error_has_one_shape_naming_the_field(server):
    client, _ = server
    empty = client.post("/price", json={"items": []})
    assert empty.status_code == 422 and empty.json() == {"error": "items: empty"}
    invalid = client.post("/price", json={"items": [{"spu_id": "A", "quantity": -1}]})
    body = invalid.json()
    assert invalid.status_code == 400 and body["error"].startswith("items[0].quantity: ") and body["detail"]
    for response in (client.get("/positions/NOPE/health"), client.get("/sweeps/nope"),
                     client.post("/sweep", json={"as_of": "bad"}),
                     httpx.post(f"{client.base_url}/price", json={"items": []}, timeout=10),
                     client.get("/no-such-route"), client.get("/price")):  # the framework's 404 and 405 too
        assert response.status_code >= 400 and isinstance(response.json(), dict) and response.json()["error"]
    assert client.get("/price").json()["error"].startswith("GET /price: ")
    not_json = client.post("/price", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"].startswith("body: "), not_json.text
    # wrong types are refused, not read into numbers (true is 1, "5" is 5 to a lax parser)
    for item in ({"spu_id": "A", "quantity": True}, {"spu_id": "A", "quantity": "5"}):
        wrong = client.post("/price", json={"items": [item]})
        assert wrong.status_code == 400 and wrong.json()["error"].startswith("items[0].quantity: "), wrong.text
    wrong_k = client.post("/similar", json={"query": {"title": "mug"}, "k": True})
    assert wrong_k.status_code == 400 and "k" in wrong_k.json()["error"], wrong_k.text
    no_query = client.post("/similar", json={"query": {}})
    assert no_query.status_code == 422 and no_query.json()["error"].startswith("query: ")


def _alert_cursor(client) -> int:
    cursor = 0
    while True:
        page = client.get("/alerts", params={"since": cursor, "limit": 1000}).json()
        cursor = page["cursor"]
        if not page["more"]:
            return cursor


def test_a_market_update_reaches_the_alert_feed_and_the_position_at_once(server):
    """Runs last in this file: its observations move the newest market day."""
    client, tables = server
    wait_for_sweep(client, client.post("/sweep", json={}).json()["sweep_id"])
    position = next(p for p in tables["positions"].iter_rows(named=True)  # one with an alert still to come
                    if client.get(f"/positions/{p['position_id']}/health").json()["latest"]["action"] != "liquidate")
    spu, last = position["spu_id"], tables["market"]["date"].max()
    price = tables["market"].filter(pl.col("spu_id") == spu)["price"].median()
    start = _alert_cursor(client)
    feed = [{"spu_id": spu, "date": (last + timedelta(days=i)).isoformat(), "price": round(price * 0.3, 2),
             "units": 0, "source": "test-feed"} for i in range(1, 11)]
    bad = [{"spu_id": "NO-SUCH-SPU", "date": last.isoformat(), "price": 3.0, "units": 1},
           {"spu_id": spu, "date": last.isoformat(), "price": -1.0, "units": 1}]
    answer = client.post("/market", json={"observations": feed + bad})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["applied"], body["rejected"]) == (10, 2) and body["positions_rescored"] >= 1
    assert {(e["item"], e["field"]) for e in body["errors"]} == {(10, "spu_id"), (11, "price")}

    alerts = client.get("/alerts", params={"since": start}).json()["alerts"]  # visible as the POST returns
    mine = [a for a in alerts if a["position_id"] == position["position_id"]]
    assert len(mine) == 1 and mine[0]["trigger"] == "market" and mine[0]["source_id"] == body["event_id"]
    assert mine[0]["observation"][0]["source"] == "test-feed" and mine[0]["reason_text"]
    changes = client.get("/positions/changes", params={"since": 0}).json()["changes"]
    assert position["position_id"] in {c["position_id"] for c in changes}
    assert all("amount_at_risk" in c and c["reason_text"] is not None for c in changes)
    health = client.get(f"/positions/{position['position_id']}/health").json()
    assert health["history"][-1]["trigger"] == "market" and health["latest"]["action"] == mine[0]["action"]
    assert any(a["trigger"] == "market" for a in health["alerts"])

    again = client.post("/market", json={"observations": feed}).json()  # the same feed twice changes nothing
    assert (again["applied"], again["unchanged"], again["event_id"]) == (0, 10, None)
    assert client.get("/alerts", params={"since": start}).json()["alerts"] == alerts

    refused = client.post("/market", json={"observations": bad})
    assert refused.status_code == 422 and "item 0, spu_id: unknown SPU 'NO-SUCH-SPU'" in refused.json()["error"]
    too_many = client.post("/market", json={"observations": feed[:1] * 5001})
    assert too_many.status_code == 413 and "at most 5000" in too_many.json()["error"]
    for query in ({"since": "soon"}, {"since": -1}, {"limit": 0}, {"since": "\u00b2"}, {"since": str(2**63)},
                  {"since": "9" * 30}):
        for route in ("/alerts", "/positions/changes"):
            response = client.get(route, params=query)
            assert response.status_code == 422 and response.json()["error"].split(":")[0] in ("since", "limit"), \
                (route, query, response.text)

    # a page that ends at the last alert says there is no other
    every = client.get("/alerts", params={"since": 0, "limit": 1000}).json()
    n = len(every["alerts"])
    assert not every["more"] and n >= 2
    exact = client.get("/alerts", params={"since": 0, "limit": n}).json()
    assert [a["seq"] for a in exact["alerts"]] == [a["seq"] for a in every["alerts"]] and exact["more"] is False
    assert client.get("/alerts", params={"since": 0, "limit": n - 1}).json()["more"] is True
    # a timestamp with a UTC offset is that moment, not the clock reading with the offset dropped
    an_hour_ago = datetime.now().astimezone() - timedelta(hours=1)
    offset = timedelta(hours=5) if an_hour_ago.utcoffset() != timedelta(hours=5) else timedelta(hours=-3)
    elsewhere = an_hour_ago.astimezone(timezone(offset)).isoformat()
    by_offset = client.get("/alerts", params={"since": elsewhere, "limit": 1000}).json()["alerts"]
    by_local = client.get("/alerts", params={"since": an_hour_ago.replace(tzinfo=None).isoformat(),
                                             "limit": 1000}).json()["alerts"]
    assert [a["seq"] for a in by_offset] == [a["seq"] for a in by_local] and mine[0]["seq"] in {a["seq"] for a in by_offset}

    # prices and units as text or true are wrong types; a non-ISO date never overwrites a stored day
    for wrong in ({"price": "12.5"}, {"price": True}, {"units": "3"}, {"units": 2**64}):
        response = client.post("/market", json={"observations": [{**feed[0], **wrong}]})
        field = next(iter(wrong))
        assert response.status_code == 400 and response.json()["error"].startswith(f"observations[0].{field}: "), \
            (wrong, response.text)
    first = tables["market"].filter(pl.col("spu_id") == spu).sort("date").row(0, named=True)
    loose = f"{first['date'].year}-{first['date'].month}-{first['date'].day}"
    response = client.post("/market", json={"observations": [{**feed[0], "date": loose, "price": 1.0}]})
    assert response.status_code == 422 and "not an ISO date" in response.json()["error"]

    # a sweep of an earlier day, run now, is history: the position's health is still the newest day's
    earlier = client.post("/sweep", json={"as_of": (last - timedelta(days=3)).isoformat()})
    wait_for_sweep(client, earlier.json()["sweep_id"])
    after = client.get(f"/positions/{position['position_id']}/health").json()
    assert after["latest"]["as_of"] == health["latest"]["as_of"] and after["latest"]["trigger"] == "market"
