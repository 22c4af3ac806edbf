// comfyui-sda: show a node's report on the node itself.
//
// Our nodes (types "SDA…") return a "text" entry in their UI output (the LoKr / stack / schedule report,
// the grid's JSON scores, the comparison table). The frontend draws "text" only for core's PreviewAny, so
// on execution this puts the text into a read-only multiline widget named "report", created on first
// execution and appended after the node's own widgets.
//
// Saved workflows and prompts are unchanged: the widget is display-only. `widget.serialize = false` keeps
// it out of the node's widgets_values (LGraphNode.serialize skips it, and as the last widget it leaves no
// hole; LGraphNode.configure maps widgets_values onto the widgets with serialize !== false only), and
// `options.serialize = false` keeps it out of the API prompt (graphToPrompt skips such widgets). Checked
// against frontend 1.32.9 (ComfyUI 0.3.75) and 1.35.9 (ComfyUI 0.8.0); tests/e2e/test_browser.py asserts it.
import { app } from "../../scripts/app.js";
import { ComfyWidgets } from "../../scripts/widgets.js";

const WIDGET = "report";

function reportText(text) {
    if (text == null) return null;
    const parts = (Array.isArray(text) ? text : [text]).filter((t) => t != null).map(String);
    return parts.length ? parts.join("\n\n") : null;
}

function reportWidget(node) {
    let widget = node.widgets?.find((w) => w.name === WIDGET && w.sdaReport);
    if (widget) return widget;
    widget = ComfyWidgets.STRING(node, WIDGET, ["STRING", { multiline: true }], app).widget;
    widget.sdaReport = true;
    widget.serialize = false; // not in widgets_values (UI-format workflow)
    widget.options = widget.options ?? {};
    widget.options.serialize = false; // not in the API prompt
    widget.options.read_only = true;
    if (widget.element) {
        widget.element.readOnly = true;
        widget.element.placeholder = "";
    }
    const [width, height] = node.computeSize();
    node.setSize([Math.max(node.size[0], width), Math.max(node.size[1], height)]);
    return widget;
}

app.registerExtension({
    name: "comfyui-sda.report",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData?.name?.startsWith("SDA")) return;
        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (message) {
            const result = onExecuted?.apply(this, arguments);
            const text = reportText(message?.text);
            if (text !== null) {
                reportWidget(this).value = text;
                this.setDirtyCanvas?.(true, true);
            }
            return result;
        };
    },
});
