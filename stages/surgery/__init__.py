"""Model surgery: physically remove whole filters (Conv2D) and neurons (Dense).

>>> groups = prunable_groups(model)                     # channel sets pruned together
>>> scores = channel_scores(model, groups[0], "l1")     # one score per channel
>>> small = prune_channels(model, {groups[0].id: np.argsort(scores)[4:]})
>>> cost = complexity_model(model)                       # {group: kept} -> params and MACs
>>> keep, reached = select_channels(groups, scores, lambda c: cost(c)["macs"], budget)

`graph` finds the groups of channels pruned together, `slicing` scores channels and cuts them out,
`cost` prices a cut before it is made, `allocate` chooses the cut that meets a budget.
"""
from slimpipe.stages.surgery.allocate import round_up, select_channels
from slimpipe.stages.surgery.cost import complexity_model
from slimpipe.stages.surgery.graph import Group, analyze_groups, prunable_groups
from slimpipe.stages.surgery.slicing import CRITERIA, channel_scores, prune_channels

__all__ = ["CRITERIA", "Group", "analyze_groups", "channel_scores", "complexity_model", "prunable_groups",
           "prune_channels", "round_up", "select_channels"]
