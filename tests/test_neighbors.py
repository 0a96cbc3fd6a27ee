import torch

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
