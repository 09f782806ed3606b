"""``fsp``: Yim et al., A Gift from Knowledge Distillation: FSP matrices (CVPR 2017)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from kdlab.adapters import ConvRegressor
from kdlab.errors import ConfigError, TapError
from kdlab.functional.features import fsp_loss, fsp_matrix
from kdlab.methods._features import MapParams, map_pairs, pair_maps, stage_name
from kdlab.methods.base import Shapes, StageConfig, StepContext, Term, pre_stage_length


class FSPParams(MapParams):
    adapter: bool = Field(
        False, description="1x1 conv + BN on student maps whose channels differ from the teacher's"
    )
    reduction: Literal["paper", "mean"] = Field(
        "mean", description="'mean' over the C1 x C2 entries (default); 'paper': their sum"
    )
    init_epochs: int | None = Field(
        None, ge=0, description="FSP stage epochs (0: none); default: 1/8 of train.epochs"
    )
    main_stage: bool = Field(False, description="also add the FSP loss to the main stage")

    @model_validator(mode="after")
    def _two_taps(self) -> FSPParams:
        if len(self.student) < 2:
            raise ConfigError(
                "fsp: give at least two taps per model; FSP matrices pair consecutive taps"
            )
        return self


class FlowOfSolutionProcedure(Term[FSPParams]):
    """FSP transfer (Yim et al., CVPR 2017; no arXiv version).

    The FSP matrix of two maps ``F1 (h x w x m)`` and ``F2 (h x w x n)`` is
    ``G_ij = sum_{s,t} F1_{s,t,i} F2_{s,t,j} / (h*w)``. The taps list the layers in order;
    FSP matrices pair consecutive taps (for a ResNet ``[layer1:input, layer1, layer2,
    layer3]`` gives each stage's input/output "flow", as in the paper). Loss, summed over
    pairs: ``mean_n ||G_T - G_S||_2^2`` (equal pair weights as in the paper).

    Stages: "fsp_init" (``init_epochs``, default 1/8 of ``train.epochs``, the reference
    protocol's 30 of 240) trains the student on the FSP loss alone; then the main stage
    trains on the recipe's other terms (the paper: CE). Default weight 1: RepDistiller's
    initialisation minimises the plain sum of the pairs' losses, and its beta 50 never
    applies (its main stage has no FSP loss). At 50, alone in its stage where the scale
    is the step size, the initialisation left the student 5 points below the label-only
    one on Fashion-MNIST (cnn3 -> cnn_tiny) and 10 on digits (cnn_medium -> cnn_tiny); at
    1, -0.6 / +0.2 on the two Fashion-MNIST pairs and 0.0 on digits. The value does not
    change when a map is upsampled (the matrix is a mean over positions).

    Shapes: inside a pair the larger map is average-pooled to the smaller (the paper
    pairs maps of equal size; RepDistiller pools the same way). Student and teacher
    matrices must have equal ``C1 x C2``: FSP has no way to adapt channel counts (the
    paper uses teacher/student pairs of equal widths), so a mismatch is a TapError
    naming the layers unless ``adapter: true`` adds a 1x1 conv + BN per student map.
    Scale: the paper sums over the ``C1 x C2`` entries (``reduction: paper``); the default
    is their mean (RepDistiller), the paper's value divided by ``C1*C2``, which does not
    change when every channel is repeated: with weight 50 the sum diverged on digits
    within 4 steps at SGD lr 0.05, the mean trained.

    3-D taps: ``(N, C, L)`` maps (``layout: ncl``) or ``(N, L, H)`` hidden states
    (``layout: nlc``), viewed as ``(N, C, 1, L)``: ``G_ij = sum_l F1_{l,i} F2_{l,j} / L``,
    the Gram between two layers over positions, the longer of a pair average-pooled
    along ``L``; ``adapter: true`` is a Conv1d of kernel 1 + BN in effect. All taps of a
    term must have one rank (a 2-D map and a 1-D one do not pair).
    """

    method = "fsp"
    default_weight = 1.0
    in_main_stage = False

    def __init__(self, params: FSPParams) -> None:
        super().__init__(params)
        self.adapters = nn.ModuleList()

    def setup(self, shapes: Shapes) -> None:
        pairs = map_pairs(self, shapes)
        ranks = {len(shapes.student[s]) for s in self.student_taps()}
        ranks |= {len(shapes.teacher[t]) for t in self.teacher_taps()}
        if len(ranks) > 1:  # consecutive taps make one matrix: a 1-D map and a 2-D one do not
            found = [
                f"student {str(s)!r} {tuple(shapes.student[s])[1:]}" for s in self.student_taps()
            ]
            found += [
                f"teacher {str(t)!r} {tuple(shapes.teacher[t])[1:]}" for t in self.teacher_taps()
            ]
            raise TapError(
                f"term {self.term_name!r} (fsp): taps of one rank are needed, all (N, C, H, W) "
                f"or all 3-D; got {', '.join(found)} per sample"
            )
        adapters: list[nn.Module] = []
        for s, t, s_shape, t_shape in pairs:
            if s_shape[1] == t_shape[1]:
                adapters.append(nn.Identity())
            elif self.params.adapter:
                target = (s_shape[0], t_shape[1], s_shape[2], s_shape[3])
                adapters.append(ConvRegressor(s_shape, target, kernel=1, bn=True))
            else:
                raise TapError(
                    f"term {self.term_name!r} (fsp): student tap {str(s)!r} has "
                    f"{s_shape[1]} channels but teacher tap {str(t)!r} has {t_shape[1]}; "
                    "FSP matrices only compare layers of equal widths. Tap layers of equal "
                    "width, or set 'adapter: true' to add a 1x1 conv on the student"
                )
        self.adapters = nn.ModuleList(adapters)

    def forward(self, ctx: StepContext) -> Tensor:
        taps = self.paired_taps()
        maps = [pair_maps(self, ctx, s, t) for s, t in taps]
        fs = [a(m_s) for (m_s, _m_t), a in zip(maps, self.adapters)]
        ft = [m_t for _m_s, m_t in maps]
        total = ctx.student.logits.new_zeros(())
        for i in range(len(taps) - 1):
            g_s, g_t = fsp_matrix(fs[i], fs[i + 1]), fsp_matrix(ft[i], ft[i + 1])
            total = total + fsp_loss(g_s, g_t, self.params.reduction)
        return total

    def pre_stages(self) -> list[StageConfig]:
        if self.params.init_epochs == 0:
            return []
        return [
            StageConfig(
                name=stage_name(self, "fsp_init"),
                **pre_stage_length(self.params.init_epochs),
                losses={self.term_name: self.weight},
                train=["student", f"terms.{self.term_name}"],
            )
        ]
