"""The web app's page: a side panel (load, prompt, options, run, verdict, report, download) and
Slicer's three slice views. Element ids (``sf-...``) are what the browser tests address."""

from __future__ import annotations

# (name, view group, colour); names are plain words: trame-slicer builds state variable names from them.
VIEWS = (("CT", 0, "#F34A33"), ("Xray", 1, "#3A8FD9"), ("Fused", 2, "#6DAD4A"))


def build_page(app):
    """The trame layout of ``app`` (a ``SamFusionWebApp``)."""
    from trame.widgets import client, html
    from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
    from trame_vuetify.widgets import vuetify3 as v

    server, ctrl = app.server, app.ctrl
    # Named triggers: what the page's JavaScript calls (and what a test can call as a client would).
    ctrl.trigger("sf_upload_ct")(lambda files: app.upload("ct", files))
    ctrl.trigger("sf_upload_xray")(lambda files: app.upload("xray", files))
    ctrl.trigger("sf_load_data")(app.load_data)
    ctrl.trigger("sf_run")(app.run)
    ctrl.trigger("sf_download")(app.download)
    with SinglePageWithDrawerLayout(server) as layout:
        client.Style("html { overflow-y: auto; } .sf-views { height: calc(100vh - 64px); }")
        layout.title.set_text("SAMFusion: CT and X-ray, registered on the target SAM finds in both, then fused")
        layout.root.theme = "dark"
        with layout.drawer as drawer:
            drawer.width = 380
            with html.Div(classes="pa-3 d-flex flex-column ga-2"):
                html.Div("1. Images", classes="text-subtitle-1")
                v.VBtn("Load the default case", id="sf-load-default", click=app.load_default_case, disabled=("sf_running",), block=True)
                v.VFileInput(label="CT: NIfTI, NRRD, MHA or a DICOM series", id="sf-upload-ct", multiple=True, density="compact",
                             disabled=("sf_running",),
                             change="trigger('sf_upload_ct', [$event.target.files])")
                v.VFileInput(label="X-ray: PNG, JPEG, NRRD or DICOM", id="sf-upload-xray", density="compact", disabled=("sf_running",),
                             change="trigger('sf_upload_xray', [$event.target.files])")
                with html.Div(v_if="sf_has_data", classes="d-flex flex-column ga-1"):
                    v.VSelect(label="CT from the server's data folder", items=("sf_data_ct",), v_model=("sf_data_ct_pick",), density="compact")
                    v.VBtn("Load CT", click="trigger('sf_load_data', ['ct'])", size="small", disabled=("sf_running",), id="sf-load-data-ct")
                    v.VSelect(label="X-ray from the server's data folder", items=("sf_data_xray",), v_model=("sf_data_xray_pick",), density="compact")
                    v.VBtn("Load X-ray", click="trigger('sf_load_data', ['xray'])", size="small", disabled=("sf_running",), id="sf-load-data-xray")
                html.Div("{{ sf_case }}", id="sf-case", classes="text-caption")
                html.Div("Scene: {{ sf_scene }}", id="sf-scene", classes="text-caption")
                html.Div("2. Prompts (click in a view after choosing)", classes="text-subtitle-1 mt-2")
                for side, label in (("ct", "CT"), ("xray", "X-ray")):
                    with html.Div(classes="d-flex ga-1"):
                        for slot, text in ((f"{side}_points", f"{label} +"), (f"{side}_negative_points", f"{label} −"), (f"{side}_roi", f"{label} box")):
                            v.VBtn(text, id=f"sf-place-{slot.replace('_', '-')}", size="small", disabled=("sf_running",),
                                   click=lambda slot=slot: app.place(slot))
                v.VBtn("Stop placing", size="small", click=app.stop_placing)
                html.Div("3. Options", classes="text-subtitle-1 mt-2")
                v.VSelect(label="Model", items=("sf_models",), v_model=("sf_model",), density="compact", id="sf-model", disabled=("sf_running",))
                html.Div("{{ sf_model_title }}", id="sf-model-title", classes="text-caption")
                html.Div("Model: {{ sf_model_status }}", id="sf-model-status", classes="text-caption")
                html.Div("{{ sf_ahead }}", id="sf-ahead", classes="text-caption mb-2")
                v.VSelect(label="Transform", items=("sf_transforms",), v_model=("sf_transform",), density="compact", disabled=("sf_running",))
                v.VSelect(label="Projection view", items=("sf_views",), v_model=("sf_view",), density="compact", disabled=("sf_running",))
                v.VSelect(label="Projection", items=("sf_projections",), v_model=("sf_projection",), density="compact", disabled=("sf_running",))
                v.VSelect(label="SAM on every Nth CT slice", items=("sf_slice_steps",), v_model=("sf_slice_step",), density="compact",
                          id="sf-slice-step", disabled=("sf_running",))
                v.VCheckbox(label="Encode the images while I place prompts", v_model=("sf_encode_ahead",), density="compact",
                            id="sf-encode-ahead", disabled=("sf_running",), hide_details=True)
                with html.Div(classes="d-flex ga-2 mt-2"):
                    v.VBtn("Run", id="sf-run", color="primary", click="trigger('sf_run', [sf_model, sf_transform, sf_view, sf_projection, sf_slice_step])",
                          disabled=("sf_running",))
                    v.VBtn("Cancel", id="sf-cancel", click=app.cancel, v_show="sf_running")
                v.VProgressLinear(model_value=("sf_progress",), v_show="sf_running", height=8, id="sf-progress")
                html.Div("{{ sf_step }}", v_show="sf_running", classes="text-caption")
                with html.Div(v_show="sf_message"):
                    v.VAlert(text=("sf_message",), type="error", density="compact")
                html.Div("{{ sf_message }}", id="sf-message", style="display: none")  # the same line, plain, for scripts
                html.Div("{{ sf_verdict }}", id="sf-verdict", v_show="sf_verdict",
                         classes=("sf_passed ? 'text-green-lighten-1 font-weight-bold' : 'text-red-lighten-1 font-weight-bold'",))
                with html.Table(v_show="sf_has_result", id="sf-report", classes="text-caption"):
                    with html.Tr(v_for="row in sf_report", key="row.name"):
                        html.Td("{{ row.name }}", classes="pr-3")
                        html.Td("{{ row.value }}", classes="sf-value")
                html.Img(src=("sf_report_png",), v_show="sf_report_png", style="width: 100%", id="sf-report-png")
                v.VBtn("Download the scene (zip)", id="sf-download", v_show="sf_has_result", block=True,
                       click="utils.download('samfusion-scene.zip', trigger('sf_download'), 'application/zip')")
        with layout.content:
            with html.Div(classes="sf-views"):
                app.layout.initialize_layout_grid(layout)
    return layout


def three_views():
    """The CT, X-ray and fused slice views side by side (trame-slicer's layout)."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition, ViewProps, ViewType

    views = [ViewLayoutDefinition(name, ViewType.SLICE_VIEW, ViewProps(orientation="Axial", label=name, color=color, group=group))
             for name, group, color in VIEWS]
    return Layout(LayoutDirection.Horizontal, views)
