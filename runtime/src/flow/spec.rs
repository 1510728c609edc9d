//! DataFlower's `workflow_info.yaml`, as DataFlower writes it, parsed and checked.
//!
//! ```yaml
//! workflow_name: wordcount
//! global_inputs:                       # $USER.<key>: a key of the caller's JSON object
//!   $USER.start: { type: NORMAL, dest: { wordcount__start: { block_0: { start } } } }
//! templates:
//!   wordcount__start:                  # a template; its block_0 runs function wordcount__start
//!     blocks:
//!       block_0:
//!         type: NORMAL                 # or SWITCH (with `conditions`)
//!         input_datas:  { start: { type: NORMAL } }          # NORMAL | LIST
//!         output_datas:
//!           file: { type: FOREACH, dest: { wordcount__count: { block_0: { file } } } }
//!           VIRTUAL.CNT: { type: NORMAL, dest: { wordcount__merge: { block_0: { VIRTUAL.CNT } } } }
//! ```
//! Output types: NORMAL (one value to every destination), FOREACH (a list: each element starts
//! one instance of the destination block), MERGE (every instance's value joins the destination's
//! LIST input, in the order of the FOREACH that started them). `VIRTUAL.CNT` is virtual: the
//! runtime posts the FOREACH's element count itself. A SWITCH block's `conditions` map a
//! predicate on one of its outputs (`illegal==True`, `split!=False`) or `default` to routes:
//! `output: dest`, where the output may be a virtual `virtual.<name>` (it carries nothing, it
//! only lets its destination start). `$USER` as a destination returns the value to the caller.
//!
//! Functions: a template's `block_0` runs the user's function named like the template; another
//! block `B` of template `T` runs function `T__B`.

use std::collections::BTreeMap;

use super::yaml::{self, Node};

/// A refused workflow file: the line at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow file, line {line}: {reason}")]
pub struct SpecError {
    pub line: usize,
    pub reason: String,
}

fn refuse<T>(line: usize, reason: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError { line, reason: reason.into() })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InputKind {
    Normal,
    List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum OutputKind {
    Normal,
    Foreach,
    Merge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum BlockKind {
    Normal,
    Switch,
}

/// Where a value goes: the caller, or an input of a block (an index into [`Workflow::blocks`]).
/// Serialised as `"$USER"` or `{"block": index, "input": name}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    User,
    Input { block: usize, input: String },
}

impl serde::Serialize for Dest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Dest::User => s.serialize_str("$USER"),
            Dest::Input { block, input } => serde::Serialize::serialize(&serde_json::json!({ "block": block, "input": input }), s),
        }
    }
}

/// The name of the output the runtime posts for a FOREACH: its element count.
pub const VIRTUAL_CNT: &str = "VIRTUAL.CNT";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Input {
    pub name: String,
    pub kind: InputKind,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Output {
    pub name: String,
    pub kind: OutputKind,
    pub dest: Vec<Dest>,
}

/// A SWITCH block's condition: when `output` compares as `op` with `value` (or always, for
/// `default`, which applies only when no other condition held).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Condition {
    /// `None` for `default`.
    pub predicate: Option<Predicate>,
    /// (output, where it goes) for this branch.
    pub routes: Vec<(String, Vec<Dest>)>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Predicate {
    pub output: String,
    pub equal: bool,
    pub value: String,
}

impl Predicate {
    /// Whether an output's value satisfies this predicate. Values are compared as text with
    /// surrounding whitespace and quotes ignored, and Python's and JSON's booleans alike
    /// (`True` matches an output posted as `true`, `True` or `1`).
    pub fn holds(&self, posted: &[u8]) -> bool {
        let norm = |s: &str| {
            let s = s.trim().trim_matches('"').trim_matches('\'');
            match s {
                "True" | "true" | "1" => "true".to_string(),
                "False" | "false" | "0" => "false".to_string(),
                other => other.to_string(),
            }
        };
        (norm(&String::from_utf8_lossy(posted)) == norm(&self.value)) == self.equal
    }
}

/// One block: what it runs, what it needs and where its outputs go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Block {
    pub template: String,
    pub name: String,
    pub function: String,
    pub kind: BlockKind,
    pub inputs: Vec<Input>,
    pub outputs: Vec<Output>,
    pub conditions: Vec<Condition>,
    #[serde(skip)]
    pub line: usize,
}

impl Block {
    /// `template.block`, as errors and timings name it.
    pub fn label(&self) -> String {
        format!("{}.{}", self.template, self.name)
    }

    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|i| i.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&Output> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// Every destination any of its outputs may reach, on any branch.
    pub fn all_dests(&self) -> impl Iterator<Item = &Dest> {
        self.outputs.iter().flat_map(|o| &o.dest).chain(self.conditions.iter().flat_map(|c| c.routes.iter().flat_map(|(_, d)| d)))
    }
}

/// A global input: the caller's JSON key and where its value goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GlobalInput {
    pub key: String,
    pub dest: Vec<Dest>,
}

/// A parsed, checked workflow.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Workflow {
    pub name: String,
    pub global_inputs: Vec<GlobalInput>,
    pub blocks: Vec<Block>,
}

impl Workflow {
    /// Parses and checks `text`; `function_exists` says whether the uploading user has a function
    /// of that name.
    pub fn parse(text: &str, function_exists: impl Fn(&str) -> bool) -> Result<Workflow, SpecError> {
        let root = yaml::parse(text).map_err(|e| SpecError { line: e.line, reason: e.reason })?;
        let w = parse_root(&root)?;
        for b in &w.blocks {
            if !function_exists(&b.function) {
                return refuse(b.line, format!("block {} of template {} runs function {:?}, which is not uploaded", b.name, b.template, b.function));
            }
        }
        Ok(w)
    }

    pub fn block(&self, template: &str, name: &str) -> Option<usize> {
        self.blocks.iter().position(|b| b.template == template && b.name == name)
    }
}

fn field<'a>(node: &'a Node, key: &str, what: &str) -> Result<&'a Node, SpecError> {
    node.get(key).map_or_else(|| refuse(node.line, format!("{what} has no `{key}`")), Ok)
}

fn map<'a>(node: &'a Node, what: &str) -> Result<&'a [(Node, Node)], SpecError> {
    if node.is_null() {
        return Ok(&[]);
    }
    node.entries().map_or_else(|| refuse(node.line, format!("{what} must be a mapping")), Ok)
}

fn key_text<'a>(key: &'a Node, what: &str) -> Result<&'a str, SpecError> {
    key.text().map_or_else(|| refuse(key.line, format!("a key of {what} must be a name")), Ok)
}

/// The `type` of `node` (`what`), one of `kinds`; `label` names it in the refusal
/// (`"{what}: {label} {other:?} (A, B or C)"`).
fn kind_of<T: Copy>(node: &Node, what: &str, label: &str, kinds: &[(&str, T)]) -> Result<T, SpecError> {
    let t = field(node, "type", what)?;
    let Some(text) = t.text() else { return refuse(t.line, format!("the type of {what} must be a name")) };
    if let Some(&(_, kind)) = kinds.iter().find(|(name, _)| *name == text) {
        return Ok(kind);
    }
    let names: Vec<&str> = kinds.iter().map(|(name, _)| *name).collect();
    let (last, rest) = names.split_last().expect("at least one kind");
    let choices = if rest.is_empty() { (*last).to_string() } else { format!("{} or {last}", rest.join(", ")) };
    refuse(t.line, format!("{what}: {label} {text:?} ({choices})"))
}

/// A destination as written: `$USER`, or template → block → input.
struct RawDest {
    line: usize,
    target: Option<(String, String, String)>,
}

fn raw_dests(node: &Node, what: &str) -> Result<Vec<RawDest>, SpecError> {
    if node.text() == Some("$USER") {
        return Ok(vec![RawDest { line: node.line, target: None }]);
    }
    let mut out = Vec::new();
    for (t, blocks) in map(node, what)? {
        let template = key_text(t, what)?;
        if template == "$USER" {
            if !blocks.is_null() {
                return refuse(t.line, format!("$USER in {what} takes no value"));
            }
            out.push(RawDest { line: t.line, target: None });
            continue;
        }
        for (b, inputs) in map(blocks, what)? {
            let block = key_text(b, what)?;
            for (i, v) in map(inputs, what)? {
                if !v.is_null() {
                    return refuse(i.line, format!("an input name in {what} takes no value"));
                }
                out.push(RawDest { line: i.line, target: Some((template.to_string(), block.to_string(), key_text(i, what)?.to_string())) });
            }
        }
    }
    if out.is_empty() {
        return refuse(node.line, format!("{what} has no destination"));
    }
    Ok(out)
}

/// Pass 1 reads blocks with their destinations as written; pass 2 resolves them.
struct RawBlock {
    block: Block,
    outputs: Vec<Vec<RawDest>>,
    routes: Vec<Vec<Vec<RawDest>>>,
}

fn parse_root(root: &Node) -> Result<Workflow, SpecError> {
    if root.entries().is_none() {
        return refuse(root.line, "a workflow file is a mapping with workflow_name, global_inputs and templates");
    }
    let name_node = field(root, "workflow_name", "the workflow")?;
    let name = name_node.text().map_or_else(|| refuse(name_node.line, "workflow_name must be a name"), Ok)?.to_string();
    let mut raw = Vec::new();
    for (t, tnode) in map(field(root, "templates", "the workflow")?, "templates")? {
        let template = key_text(t, "templates")?;
        let blocks = field(tnode, "blocks", &format!("template {template}"))?;
        for (b, bnode) in map(blocks, &format!("the blocks of {template}"))? {
            raw.push(parse_block(template, key_text(b, "blocks")?, b.line, bnode)?);
        }
    }
    if raw.is_empty() {
        return refuse(root.line, "the workflow has no blocks");
    }
    let resolve = |raw_blocks: &[RawBlock], d: &RawDest, kind: Option<OutputKind>| -> Result<Dest, SpecError> {
        let Some((t, b, i)) = &d.target else { return Ok(Dest::User) };
        let Some(index) = raw_blocks.iter().position(|r| &r.block.template == t && &r.block.name == b) else {
            return refuse(d.line, format!("no block {b} in a template {t}"));
        };
        let Some(input) = raw_blocks[index].block.input(i) else {
            return refuse(d.line, format!("block {b} of {t} has no input {i}"));
        };
        let list = input.kind == InputKind::List;
        if kind.is_some_and(|k| (k == OutputKind::Merge) != list) {
            let why = if list { "a LIST input is filled by MERGE outputs only" } else { "a MERGE output goes to LIST inputs only" };
            return refuse(d.line, format!("input {i} of {t}.{b}: {why}"));
        }
        Ok(Dest::Input { block: index, input: i.clone() })
    };
    let mut global_inputs = Vec::new();
    for (k, v) in map(field(root, "global_inputs", "the workflow")?, "global_inputs")? {
        let key = key_text(k, "global_inputs")?;
        let Some(key) = key.strip_prefix("$USER.").filter(|s| !s.is_empty()) else {
            return refuse(k.line, format!("global input {key:?}: global inputs are named $USER.<key>"));
        };
        let dest = raw_dests(field(v, "dest", &format!("global input {key}"))?, &format!("global input {key}"))?;
        let dest = dest.iter().map(|d| resolve(&raw, d, Some(OutputKind::Normal))).collect::<Result<Vec<_>, _>>()?;
        global_inputs.push(GlobalInput { key: key.to_string(), dest });
    }
    let mut blocks = Vec::with_capacity(raw.len());
    for r in &raw {
        let mut block = r.block.clone();
        for (o, dests) in block.outputs.iter_mut().zip(&r.outputs) {
            o.dest = dests.iter().map(|d| resolve(&raw, d, Some(o.kind))).collect::<Result<_, _>>()?;
        }
        for (c, routes) in block.conditions.iter_mut().zip(&r.routes) {
            for ((output, dest), raws) in c.routes.iter_mut().zip(routes) {
                let kind = r.block.output(output).map(|o| o.kind);
                *dest = raws.iter().map(|d| resolve(&raw, d, kind)).collect::<Result<_, _>>()?;
            }
        }
        blocks.push(block);
    }
    let w = Workflow { name, global_inputs, blocks };
    check_inputs_produced(&w)?;
    check_acyclic(&w)?;
    Ok(w)
}

fn parse_block(template: &str, name: &str, line: usize, node: &Node) -> Result<RawBlock, SpecError> {
    let what = format!("block {name} of {template}");
    let kind = kind_of(node, &what, "block type", &[("NORMAL", BlockKind::Normal), ("SWITCH", BlockKind::Switch)])?;
    if let (BlockKind::Normal, Some(c)) = (kind, node.get("conditions")) {
        return refuse(c.line, format!("{what}: only SWITCH blocks have conditions"));
    }
    let mut inputs: Vec<Input> = Vec::new();
    if let Some(ins) = node.get("input_datas") {
        for (k, v) in map(ins, &format!("the input_datas of {what}"))? {
            let input = key_text(k, "input_datas")?;
            let kind = kind_of(v, &format!("input {input} of {what}"), "type", &[("NORMAL", InputKind::Normal), ("LIST", InputKind::List)])?;
            inputs.push(Input { name: input.to_string(), kind });
        }
    }
    let mut outputs = Vec::new();
    let mut output_dests = Vec::new();
    if let Some(outs) = node.get("output_datas") {
        for (k, v) in map(outs, &format!("the output_datas of {what}"))? {
            let output = key_text(k, "output_datas")?;
            let kinds = [("NORMAL", OutputKind::Normal), ("FOREACH", OutputKind::Foreach), ("MERGE", OutputKind::Merge)];
            let okind = kind_of(v, &format!("output {output} of {what}"), "type", &kinds)?;
            // A SWITCH block's outputs may have no `dest`: they feed its conditions.
            let dests = match v.get("dest") {
                Some(d) => raw_dests(d, &format!("output {output} of {what}"))?,
                None if kind == BlockKind::Switch => Vec::new(),
                None => return refuse(v.line, format!("output {output} of {what} has no `dest`")),
            };
            outputs.push(Output { name: output.to_string(), kind: okind, dest: Vec::new() });
            output_dests.push(dests);
        }
    }
    if outputs.iter().filter(|o| o.kind == OutputKind::Foreach).count() > 1 {
        return refuse(line, format!("{what} has more than one FOREACH output"));
    }
    if outputs.iter().any(|o| o.name == VIRTUAL_CNT) && !outputs.iter().any(|o| o.kind == OutputKind::Foreach) {
        return refuse(line, format!("{what} posts {VIRTUAL_CNT} but has no FOREACH output to count"));
    }
    let mut conditions = Vec::new();
    let mut routes_raw = Vec::new();
    match (kind, node.get("conditions")) {
        (BlockKind::Normal, Some(_)) => unreachable!("refused above"),
        (BlockKind::Switch, None) => return refuse(line, format!("{what} is a SWITCH without conditions")),
        (BlockKind::Normal, None) => {}
        (BlockKind::Switch, Some(c)) => {
            for (k, v) in map(c, &format!("the conditions of {what}"))? {
                let text = key_text(k, "conditions")?;
                let predicate = if text == "default" {
                    None
                } else {
                    let (output, equal, value) = if let Some((o, v)) = text.split_once("!=") {
                        (o, false, v)
                    } else if let Some((o, v)) = text.split_once("==") {
                        (o, true, v)
                    } else {
                        return refuse(k.line, format!("condition {text:?} of {what}: write output==value, output!=value or default"));
                    };
                    let output = output.trim();
                    if outputs.iter().all(|o| o.name != output) {
                        return refuse(k.line, format!("condition {text:?} of {what} tests {output:?}, which is not one of its outputs"));
                    }
                    Some(Predicate { output: output.to_string(), equal, value: value.trim().to_string() })
                };
                let mut routes = Vec::new();
                let mut raws = Vec::new();
                for (o, d) in map(v, &format!("condition {text:?} of {what}"))? {
                    let out = key_text(o, "a condition")?;
                    if !out.starts_with("virtual.") && outputs.iter().all(|x| x.name != out) {
                        return refuse(o.line, format!("condition {text:?} of {what} routes {out:?}, which is neither an output nor virtual.<name>"));
                    }
                    raws.push(raw_dests(d, &format!("route {out} of {what}"))?);
                    routes.push((out.to_string(), Vec::new()));
                }
                conditions.push(Condition { predicate, routes });
                routes_raw.push(raws);
            }
        }
    }
    let function = if name == "block_0" { template.to_string() } else { format!("{template}__{name}") };
    let block = Block { template: template.to_string(), name: name.to_string(), function, kind, inputs, outputs, conditions, line };
    Ok(RawBlock { block, outputs: output_dests, routes: routes_raw })
}

/// Every input of every block has someone who sends it a value.
fn check_inputs_produced(w: &Workflow) -> Result<(), SpecError> {
    let mut fed: BTreeMap<(usize, &str), ()> = BTreeMap::new();
    let sends = w.global_inputs.iter().flat_map(|g| &g.dest).chain(w.blocks.iter().flat_map(Block::all_dests));
    for d in sends {
        if let Dest::Input { block, input } = d {
            fed.insert((*block, input), ());
        }
    }
    for (i, b) in w.blocks.iter().enumerate() {
        for input in &b.inputs {
            if !fed.contains_key(&(i, input.name.as_str())) {
                return refuse(b.line, format!("input {} of block {} of {} is sent by no one (no global input, output or condition names it)", input.name, b.name, b.template));
            }
        }
    }
    Ok(())
}

/// No block feeds itself through any chain of destinations.
fn check_acyclic(w: &Workflow) -> Result<(), SpecError> {
    // 0 unvisited, 1 on the current path, 2 done.
    fn visit(w: &Workflow, i: usize, mark: &mut [u8], path: &mut Vec<usize>) -> Result<(), SpecError> {
        match mark[i] {
            2 => return Ok(()),
            1 => {
                let from = path.iter().position(|&p| p == i).unwrap_or(0);
                let names: Vec<String> = path[from..].iter().chain([&i]).map(|&p| w.blocks[p].label()).collect();
                return refuse(w.blocks[i].line, format!("the workflow has a cycle: {}", names.join(" -> ")));
            }
            _ => {}
        }
        mark[i] = 1;
        path.push(i);
        for d in w.blocks[i].all_dests() {
            if let Dest::Input { block, .. } = d {
                visit(w, *block, mark, path)?;
            }
        }
        path.pop();
        mark[i] = 2;
        Ok(())
    }
    let mut mark = vec![0u8; w.blocks.len()];
    for i in 0..w.blocks.len() {
        visit(w, i, &mut mark, &mut Vec::new())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
