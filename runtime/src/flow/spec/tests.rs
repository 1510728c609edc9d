use super::*;

const WORDCOUNT: &str = include_str!("../../../../functions/workflows/wordcount/workflow_info.yaml");
const SVD: &str = include_str!("../../../../functions/workflows/svd/workflow_info.yaml");
const RECOGNIZER: &str = include_str!("../../../../functions/workflows/recognizer/workflow_info.yaml");

fn any(_: &str) -> bool {
    true
}

fn err(text: &str) -> SpecError {
    Workflow::parse(text, any).unwrap_err()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle in text") + 1
}

#[test]
fn wordcount_parses_into_a_foreach_and_a_merge() {
    let w = Workflow::parse(WORDCOUNT, any).unwrap();
    assert_eq!(w.name, "wordcount");
    let start = w.block("wordcount__start", "block_0").unwrap();
    let count = w.block("wordcount__count", "block_0").unwrap();
    let merge = w.block("wordcount__merge", "block_0").unwrap();
    assert_eq!(w.global_inputs, vec![GlobalInput { key: "start".into(), dest: vec![Dest::Input { block: start, input: "start".into() }] }]);
    let file = w.blocks[start].output("file").unwrap();
    assert_eq!((file.kind, &file.dest[..]), (OutputKind::Foreach, &[Dest::Input { block: count, input: "file".into() }][..]));
    let cnt = w.blocks[start].output(VIRTUAL_CNT).unwrap();
    assert_eq!(cnt.dest, vec![Dest::Input { block: merge, input: VIRTUAL_CNT.into() }]);
    assert_eq!(w.blocks[count].output("res").unwrap().kind, OutputKind::Merge);
    assert_eq!(w.blocks[merge].input("counts").unwrap().kind, InputKind::List);
    assert_eq!(w.blocks[merge].output("res").unwrap().dest, vec![Dest::User]);
    assert_eq!(w.blocks[merge].function, "wordcount__merge");
}

#[test]
fn svd_and_recognizer_parse_with_their_switches() {
    let w = Workflow::parse(SVD, any).unwrap();
    assert_eq!(w.blocks.len(), 3);
    let w = Workflow::parse(RECOGNIZER, any).unwrap();
    assert_eq!(w.blocks.len(), 7);
    let adult = &w.blocks[w.block("recognizer__adult", "block_0").unwrap()];
    assert_eq!(adult.kind, BlockKind::Switch);
    let mosaic = w.block("recognizer__mosaic", "block_0").unwrap();
    let extract = w.block("recognizer__extract", "block_0").unwrap();
    assert_eq!(adult.conditions.len(), 2);
    let illegal = adult.conditions[0].predicate.as_ref().unwrap();
    assert_eq!((illegal.output.as_str(), illegal.equal, illegal.value.as_str()), ("illegal", true, "True"));
    assert_eq!(adult.conditions[0].routes, vec![("virtual.start".to_string(), vec![Dest::Input { block: mosaic, input: "start".into() }])]);
    assert_eq!(adult.conditions[1].predicate, None);
    assert_eq!(adult.conditions[1].routes[0].1, vec![Dest::Input { block: extract, input: "start_0".into() }]);
    let censor = &w.blocks[w.block("recognizer__censor", "block_0").unwrap()];
    assert_eq!(censor.conditions[1].routes, vec![("text".to_string(), vec![Dest::User])]);
    // The image goes to four blocks.
    let upload = &w.blocks[w.block("recognizer__upload", "block_0").unwrap()];
    assert_eq!(upload.output("img").unwrap().dest.len(), 4);
}

#[test]
fn predicates_compare_python_and_json_booleans_alike() {
    let p = Predicate { output: "illegal".into(), equal: true, value: "True".into() };
    for yes in [&b"True"[..], b"true", b"1", b" true\n", b"\"True\""] {
        assert!(p.holds(yes), "{yes:?}");
    }
    for no in [&b"False"[..], b"false", b"", b"yes"] {
        assert!(!p.holds(no), "{no:?}");
    }
    let q = Predicate { output: "split".into(), equal: false, value: "False".into() };
    assert!(q.holds(b"true") && !q.holds(b"false"));
}

#[test]
fn a_missing_function_is_refused_at_its_block() {
    let e = Workflow::parse(WORDCOUNT, |f| f != "wordcount__count").unwrap_err();
    assert!(e.reason.contains("wordcount__count") && e.reason.contains("not uploaded"), "{e}");
    // The block's line: `block_0:` under wordcount__count.
    let t = WORDCOUNT.lines().position(|l| l == "  wordcount__count:").unwrap() + 1;
    assert_eq!(e.line, t + 2, "{e}");
}

#[test]
fn a_cycle_is_refused_with_its_path() {
    let text = WORDCOUNT.replace("            dest: { $USER }", "            dest:\n              wordcount__count: { block_0: { file } }");
    let e = err(&text);
    assert!(e.reason.contains("cycle"), "{e}");
    assert!(e.reason.contains("wordcount__count.block_0 -> wordcount__merge.block_0 -> wordcount__count.block_0"), "{e}");
}

#[test]
fn an_input_no_one_sends_is_refused() {
    let text = WORDCOUNT.replace("          counts: { type: LIST }", "          counts: { type: LIST }\n          extra: { type: NORMAL }");
    let e = err(&text);
    assert!(e.reason.contains("input extra") && e.reason.contains("sent by no one"), "{e}");
}

#[test]
fn bad_destinations_types_and_syntax_name_their_line() {
    let text = WORDCOUNT.replace("wordcount__count: { block_0: { file } }", "wordcount__cuont: { block_0: { file } }");
    let e = err(&text);
    assert_eq!(e.line, line_of(&text, "wordcount__cuont"), "{e}");
    assert!(e.reason.contains("no block block_0 in a template wordcount__cuont"), "{e}");

    let text = WORDCOUNT.replace("{ block_0: { file } }", "{ block_0: { fiel } }");
    assert!(err(&text).reason.contains("has no input fiel"));

    let text = WORDCOUNT.replace("type: FOREACH", "type: FOREVER");
    let e = err(&text);
    assert_eq!(e.line, line_of(&text, "FOREVER"));

    // A MERGE output into a NORMAL input, and the reverse.
    let text = WORDCOUNT.replace("counts: { type: LIST }", "counts: { type: NORMAL }");
    assert!(err(&text).reason.contains("MERGE"));
    let text = WORDCOUNT.replace("type: MERGE", "type: NORMAL");
    assert!(err(&text).reason.contains("LIST"));

    let text = WORDCOUNT.replace("  $USER.start:", "  start:");
    assert!(err(&text).reason.contains("$USER.<key>"));

    let text = WORDCOUNT.replace("        input_datas:\n          file: { type: NORMAL }", "        input_datas:\n          file: { type: NORMAL");
    let e = err(&text);
    assert!(e.line > line_of(&text, "file: { type: NORMAL"), "{e}");

    assert!(err("workflow_name: x\n").reason.contains("templates"));
    assert!(err("- a\n- b\n").reason.contains("mapping"));
}

#[test]
fn switch_conditions_are_checked() {
    let text = RECOGNIZER.replacen("illegal==True:", "ilegal==True:", 1);
    assert!(err(&text).reason.contains("not one of its outputs"));
    let text = RECOGNIZER.replacen("illegal==True:", "illegal=True:", 1);
    assert!(err(&text).reason.contains("output==value"));
    let text = RECOGNIZER.replacen("            virtual.start:\n", "            start:\n", 1);
    assert!(err(&text).reason.contains("virtual.<name>"));
    let text = RECOGNIZER.replacen("type: SWITCH", "type: NORMAL", 1);
    assert!(err(&text).reason.contains("only SWITCH blocks"));
}

#[test]
fn the_dag_serialises_for_get() {
    let w = Workflow::parse(WORDCOUNT, any).unwrap();
    let v = serde_json::to_value(&w).unwrap();
    assert_eq!(v["name"], "wordcount");
    assert_eq!(v["blocks"][2]["outputs"][0]["dest"][0], "$USER");
    assert_eq!(v["blocks"][0]["outputs"][0]["kind"], "FOREACH");
}
