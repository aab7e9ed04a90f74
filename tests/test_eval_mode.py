"""`kept_in_eval`: a frozen module stays in eval mode through a trainer's mode switches, without walking them."""
import torch

from rewire_lib.models.eval_mode import kept_in_eval


def small_net():
    return torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5), torch.nn.Sequential(torch.nn.ReLU()))


def test_train_and_eval_leave_a_kept_module_in_eval_mode_and_its_submodules_unvisited():
    frozen, head = small_net().train(), torch.nn.Linear(3, 1)
    modules = torch.nn.ModuleDict({"encoder": frozen, "head": head})
    with kept_in_eval(frozen) as kept:
        assert kept is frozen and not any(m.training for m in frozen.modules())
        for sub in frozen.modules():  # a walk would set this back to False; nothing visits them now
            sub.training = "untouched"
        assert modules.train() is modules and head.training
        assert frozen.eval() is frozen and frozen.train(True) is frozen
        assert all(m.training == "untouched" for m in frozen.modules())
        for sub in frozen.modules():
            sub.training = False
    assert "train" not in vars(frozen)  # the class's own method is back
    frozen.train()
    assert all(m.training for m in frozen.modules())


def test_an_inactive_keep_leaves_the_module_alone():
    net = small_net().train()
    with kept_in_eval(net, active=False):
        assert net.training
        net.eval()
        assert not net[1].training
    assert "train" not in vars(net)


def test_the_module_gets_its_train_back_when_the_block_raises():
    net = small_net()
    try:
        with kept_in_eval(net):
            raise KeyError("stop")
    except KeyError:
        pass
    net.train()
    assert net.training and net[1].training
