"""Registration: align the X-ray to the CT (or its projection) on SAM's masks.

Owns the CT projection (DRR, parallel and perspective: ``projection``, ``radiograph``), the paper's
Match_Loss and the NGF term (``match_loss``), the 2D transform family rigid -> non-rigid
(``transforms2d``), the optimiser (``register``), the verdict that passes or fails a result
(``verdict``), the prompt-box shapes of the fallback (``prompt_shapes``) and ``samfusion register``'s
file handling (``files``). It may import ``imaging``, ``errors`` and ``device``; never ``sam``,
``fusion`` or the scene.
"""
