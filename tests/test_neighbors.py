import sys

import pytest
import torch

from finetune import neighbors
from finetune.errors import ConfigError
from finetune.neighbors import nearest


def _exact(queries, bank, k, exclude_self):
    s = queries @ bank.T
    if exclude_self:
        s.fill_diagonal_(-2.0)
    return s.topk(k, dim=1)


def test_nearest_equals_the_full_matrix_across_tiles():
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(23, 5, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(11, 5, generator=g), dim=1)
    v, i = nearest(queries, bank, 4, block=7)  # tiles cut rows and columns unevenly
    ev, ei = _exact(queries, bank, 4, False)
    assert torch.allclose(v, ev) and torch.equal(i, ei)


def test_a_row_is_not_its_own_neighbour():
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(19, 4, generator=g), dim=1)
    v, i = nearest(x, x, 3, exclude_self=True, block=5)
    ev, ei = _exact(x, x.clone(), 3, True)
    assert torch.allclose(v, ev) and torch.equal(i, ei)
    assert not (i == torch.arange(19).unsqueeze(1)).any()
    assert nearest(x[:1], x[:1], 5, exclude_self=True)[0].shape == (1, 0)


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_the_forced_index_search_finds_what_the_exact_search_finds(capfd):
    pytest.importorskip("faiss")
    for n in (300, 30):  # several cells, one
        bank, queries = _unit(n, 16, 2), _unit(40, 16, 3)
        for q, exclude in ((queries, False), (bank, True)):
            v, i = nearest(q, bank, 5, exclude_self=exclude, approximate=True)
            ev, ei = nearest(q, bank, 5, exclude_self=exclude, approximate=False)
            assert torch.equal(i, ei) and torch.allclose(v, ev, atol=1e-5)
    assert capfd.readouterr() == ("", "")  # faiss printed nothing into the host's output
    i = nearest(bank, bank, 3, exclude_self=True, approximate=True)[1]
    assert not (i == torch.arange(len(bank))[:, None]).any()


def test_the_index_is_chosen_only_past_the_limit_and_with_faiss(monkeypatch):
    pytest.importorskip("faiss")
    assert not neighbors.uses_approximate(10_000, 10_000, 1280)
    assert neighbors.uses_approximate(100_000, 100_000, 1280)
    assert not neighbors.uses_approximate(100_000, 100_000, 1280, approximate=False)
    calls = []
    monkeypatch.setattr(neighbors, "_index_search", lambda *a: calls.append(a) or neighbors._exact(*a, 8))
    x = _unit(30, 4, 4)
    nearest(x, x, 3, exclude_self=True)
    assert not calls  # small: exact
    monkeypatch.setattr(neighbors, "EXACT_LIMIT", 0)
    nearest(x, x, 3, exclude_self=True)
    assert len(calls) == 1
    monkeypatch.setattr(neighbors, "faiss_installed", lambda: False)
    nearest(x, x, 3, exclude_self=True)
    assert len(calls) == 1  # without faiss, exact however large


def test_forcing_the_index_without_faiss_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    x = _unit(10, 4, 5)
    with pytest.raises(ConfigError, match="pip install"):
        nearest(x, x, 3, approximate=True)


def test_the_index_search_leaves_a_row_out_among_identical_copies():
    pytest.importorskip("faiss")
    bank = _unit(100, 16, 6)
    bank[:12] = bank[0]  # twelve identical rows: the search may return any four of them, with or without the row
    v, i = nearest(bank, bank, 3, exclude_self=True, approximate=True)
    assert i.shape == (100, 3) and not (i == torch.arange(100)[:, None]).any()
    assert torch.allclose(v, nearest(bank, bank, 3, exclude_self=True, approximate=False)[0], atol=1e-5)


def test_the_index_probing_a_few_cells_still_finds_near_copies():
    pytest.importorskip("faiss")
    x = _unit(5000, 32, 7)  # 125 cells, 16 probed: most of the bank is never compared
    g = torch.Generator().manual_seed(8)
    x[1::2][:50] = torch.nn.functional.normalize(x[0::2][:50] + 0.1 * torch.randn(50, 32, generator=g), dim=1)
    v, i = nearest(x[:100], x, 1, exclude_self=True, approximate=True)
    assert i[:, 0].tolist() == [r + 1 if r % 2 == 0 else r - 1 for r in range(100)]
