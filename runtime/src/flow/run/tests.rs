//! The scheduler on a real platform (paged memory, the call pool) with small WAT blocks that use
//! the data ABI: `split` posts each byte of its input as a FOREACH element, `upper` upper-cases
//! its element (and traps on `#`), `join` concatenates its LIST in order.

use super::*;
use crate::pager::{Pager, PagerConfig};
use crate::platform::PlatformConfig;

const SPLIT: &str = r#"(module
  (import "env" "__ebb_flow_fetch" (func $fetch (param i32 i32 i32 i32) (result i32)))
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "start\00file\00")
  (func (export "_start") (local $n i32) (local $i i32)
    (local.set $n (call $fetch (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 60000)))
    (block $done (loop $l
      (br_if $done (i32.ge_s (local.get $i) (local.get $n)))
      (drop (call $post (i32.const 6) (i32.add (i32.const 1024) (local.get $i)) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))))"#;

const UPPER: &str = r#"(module
  (import "env" "__ebb_flow_fetch" (func $fetch (param i32 i32 i32 i32) (result i32)))
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "file\00res\00")
  (func (export "_start")
    (if (i32.ne (call $fetch (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1)) (i32.const 1)) (then unreachable))
    (if (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 35)) (then unreachable))
    (i32.store8 (i32.const 1024) (i32.sub (i32.load8_u (i32.const 1024)) (i32.const 32)))
    (drop (call $post (i32.const 5) (i32.const 1024) (i32.const 1)))))"#;

const JOIN: &str = r#"(module
  (import "env" "__ebb_flow_count" (func $count (param i32) (result i32)))
  (import "env" "__ebb_flow_fetch" (func $fetch (param i32 i32 i32 i32) (result i32)))
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "counts\00res\00VIRTUAL.CNT\00")
  (func (export "_start") (local $n i32) (local $i i32)
    (local.set $n (call $count (i32.const 0)))
    (block $done (loop $l
      (br_if $done (i32.ge_s (local.get $i) (local.get $n)))
      (drop (call $fetch (i32.const 0) (local.get $i) (i32.add (i32.const 1024) (local.get $i)) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $l)))
    ;; The count the runtime posted goes after the letters.
    (local.set $i (call $fetch (i32.const 11) (i32.const 0) (i32.add (i32.const 1024) (local.get $n)) (i32.const 16)))
    (drop (call $post (i32.const 7) (i32.const 1024) (i32.add (local.get $n) (local.get $i))))))"#;

/// Posts `illegal` = True when its image starts with `x`.
const CHECK: &str = r#"(module
  (import "env" "__ebb_flow_fetch" (func $fetch (param i32 i32 i32 i32) (result i32)))
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "img\00illegal\00True\00False\00")
  (func (export "_start")
    (drop (call $fetch (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 1)))
    (if (i32.eq (i32.load8_u (i32.const 1024)) (i32.const 120))
      (then (drop (call $post (i32.const 4) (i32.const 12) (i32.const 4))))
      (else (drop (call $post (i32.const 4) (i32.const 17) (i32.const 5)))))))"#;

fn constant(word: &str) -> String {
    format!(
        r#"(module
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "res\00{word}")
  (func (export "_start") (drop (call $post (i32.const 0) (i32.const 4) (i32.const {})))))"#,
        word.len()
    )
}

const MAP: &str = r#"
workflow_name: letters
global_inputs:
  $USER.start:
    type: NORMAL
    dest:
      t__split: { block_0: { start } }
templates:
  t__split:
    blocks:
      block_0:
        type: NORMAL
        input_datas:
          start: { type: NORMAL }
        output_datas:
          file:
            type: FOREACH
            dest:
              t__upper: { block_0: { file } }
          VIRTUAL.CNT:
            type: NORMAL
            dest:
              t__join: { block_0: { VIRTUAL.CNT } }
  t__upper:
    blocks:
      block_0:
        type: NORMAL
        input_datas:
          file: { type: NORMAL }
        output_datas:
          res:
            type: MERGE
            dest:
              t__join: { block_0: { counts } }
  t__join:
    blocks:
      block_0:
        type: NORMAL
        input_datas:
          VIRTUAL.CNT: { type: NORMAL }
          counts: { type: LIST }
        output_datas:
          res:
            type: NORMAL
            dest: { $USER }
"#;

const ROUTE: &str = r#"
workflow_name: route
global_inputs:
  $USER.img:
    type: NORMAL
    dest:
      r__check: { block_0: { img } }
templates:
  r__check:
    blocks:
      block_0:
        type: SWITCH
        input_datas:
          img: { type: NORMAL }
        output_datas:
          illegal: { type: NORMAL }
        conditions:
          illegal==True:
            virtual.start:
              r__bad: { block_0: { start } }
          default:
            virtual.start:
              r__good: { block_0: { start } }
  r__bad:
    blocks:
      block_0:
        type: NORMAL
        input_datas:
          start: { type: NORMAL }
        output_datas:
          res: { type: NORMAL, dest: { $USER } }
  r__good:
    blocks:
      block_0:
        type: NORMAL
        input_datas:
          start: { type: NORMAL }
        output_datas:
          res: { type: NORMAL, dest: { $USER } }
"#;

fn platform(tag: &str) -> (Arc<Platform>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ebb-flow-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let transport = Arc::new(ebb_memnode::LocalTransport::embedded(1 << 28));
    let pager = Pager::new(PagerConfig::default(), transport).unwrap();
    let config = PlatformConfig { data_dir: dir.clone(), call_timeout: Duration::from_secs(20), ..Default::default() };
    let p = Platform::start(config, pager).unwrap();
    for (name, wat) in [("t__split", SPLIT.to_string()), ("t__upper", UPPER.into()), ("t__join", JOIN.into()), ("r__check", CHECK.into()), ("r__bad", constant("bad")), ("r__good", constant("good"))] {
        p.upload("u", name, wat.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    (p, dir)
}

fn run(p: &Arc<Platform>, yaml: &str, key: &str, input: &[u8]) -> (Outcome, Vec<BlockTiming>) {
    let w = Arc::new(Workflow::parse(yaml, |_| true).unwrap());
    let inputs = BTreeMap::from([(key.to_string(), input.to_vec())]);
    let r = Run::start(p.clone(), w, "u", &inputs, Duration::from_secs(60)).unwrap();
    let o = r.wait();
    (o, r.timings())
}

fn done(o: &Outcome) -> &[u8] {
    match o {
        Outcome::Done(m) => &m["res"],
        other => panic!("{other:?}"),
    }
}

#[test]
fn foreach_fans_out_and_merge_keeps_element_order() {
    let (p, dir) = platform("fan");
    let (o, t) = run(&p, MAP, "start", b"hello");
    assert_eq!(done(&o), b"HELLO5");
    assert_eq!(t.iter().filter(|t| t.block == "t__upper.block_0").count(), 5);
    let split = t.iter().find(|t| t.block == "t__split.block_0").unwrap();
    let join = t.iter().find(|t| t.block == "t__join.block_0").unwrap();
    assert_eq!((split.bytes_in, split.bytes_out), (5, 5));
    // The join starts after every upper ended.
    assert!(t.iter().filter(|t| t.block == "t__upper.block_0").all(|u| u.end_us <= join.start_us && u.start_us >= split.end_us), "{t:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn foreach_of_zero_and_of_a_thousand_elements() {
    let (p, dir) = platform("sizes");
    let (o, t) = run(&p, MAP, "start", b"");
    assert_eq!(done(&o), b"0");
    assert!(t.iter().all(|t| t.block != "t__upper.block_0"));
    let text: Vec<u8> = (0..1000u32).map(|i| b'a' + u8::try_from(i % 26).unwrap()).collect();
    let (o, t) = run(&p, MAP, "start", &text);
    let mut want: Vec<u8> = text.iter().map(|c| c - 32).collect();
    want.extend_from_slice(b"1000");
    assert_eq!(done(&o), &want[..]);
    assert_eq!(t.len(), 1002);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_trapping_block_fails_the_workflow_with_its_name_and_nothing_after_it_runs() {
    let (p, dir) = platform("trap");
    let (o, t) = run(&p, MAP, "start", b"ab#d");
    match o {
        Outcome::Failed(e) => assert!(e.contains("t__upper.block_0") && e.contains("unreachable"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(t.iter().all(|t| t.block != "t__join.block_0"), "{t:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_switch_routes_by_its_condition_or_default() {
    let (p, dir) = platform("switch");
    let (o, t) = run(&p, ROUTE, "img", b"xyz");
    assert_eq!(done(&o), b"bad");
    assert!(t.iter().all(|t| t.block != "r__good.block_0"));
    let (o, _) = run(&p, ROUTE, "img", b"abc");
    assert_eq!(done(&o), b"good");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn missing_and_oversize_inputs_are_refused_before_anything_runs() {
    let (p, dir) = platform("inputs");
    let w = Arc::new(Workflow::parse(MAP, |_| true).unwrap());
    let e = Run::start(p.clone(), w.clone(), "u", &BTreeMap::new(), Duration::from_secs(5)).unwrap_err();
    assert_eq!(e, StartError::MissingInput("start".into()));
    let big = BTreeMap::from([("start".to_string(), vec![b'a'; p.config().max_input + 1])]);
    assert!(matches!(Run::start(p.clone(), w, "u", &big, Duration::from_secs(5)), Err(StartError::TooLarge { .. })));
    let _ = std::fs::remove_dir_all(dir);
}

/// Bytes `hand__make` posts from its output buffer (32 whole pages and a tail), and their pattern.
const HANDED: usize = 131_172;

fn pattern(i: usize) -> u8 {
    u8::try_from(i * 7 % 251).unwrap()
}

/// Writes the pattern into an output buffer at 1 MiB, posts it from there, then overwrites its
/// first byte (a later write no reader may see).
const MAKE: &str = r#"(module
  (import "env" "__ebb_flow_buffer" (func $buffer (param i32 i32) (result i32)))
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (memory (export "memory") 64)
  (data (i32.const 0) "out\00")
  (func (export "_start") (local $i i32)
    (if (i32.ne (call $buffer (i32.const 1048576) (i32.const 135168)) (i32.const 0)) (then unreachable))
    (loop $l
      (i32.store8 (i32.add (i32.const 1048576) (local.get $i)) (i32.rem_u (i32.mul (local.get $i) (i32.const 7)) (i32.const 251)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 131172))))
    (if (i32.ne (call $post (i32.const 0) (i32.const 1048576) (i32.const 131172)) (i32.const 0)) (then unreachable))
    (i32.store8 (i32.const 1048576) (i32.const 255))))"#;

/// Fetches `out` into page-aligned untouched memory at 2 MiB, optionally writes its first byte,
/// and posts what it then holds as `res`.
fn take(write: bool) -> String {
    let write = if write { "(i32.store8 (i32.const 2097152) (i32.const 238))" } else { "" };
    format!(
        r#"(module
  (import "env" "__ebb_flow_fetch" (func $fetch (param i32 i32 i32 i32) (result i32)))
  (import "env" "__ebb_flow_post" (func $post (param i32 i32 i32) (result i32)))
  (memory (export "memory") 64)
  (data (i32.const 0) "out\00res\00")
  (func (export "_start") (local $n i32)
    (local.set $n (call $fetch (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (if (i32.ne (call $fetch (i32.const 0) (i32.const 0) (i32.const 2097152) (local.get $n)) (local.get $n)) (then unreachable))
    {write}
    (drop (call $post (i32.const 4) (i32.const 2097152) (local.get $n)))))"#
    )
}

const HAND: &str = r#"
workflow_name: hand
global_inputs:
  $USER.go: { type: NORMAL, dest: { hand__make: { block_0: { go } } } }
templates:
  hand__make:
    blocks:
      block_0:
        type: NORMAL
        input_datas: { go: { type: NORMAL } }
        output_datas:
          out: { type: NORMAL, dest: { hand__dirty: { block_0: { out } }, hand__clean: { block_0: { out } } } }
  hand__dirty:
    blocks:
      block_0:
        type: NORMAL
        input_datas: { out: { type: NORMAL } }
        output_datas:
          res: { type: NORMAL, dest: { $USER } }
  hand__clean:
    blocks:
      block_0:
        type: NORMAL
        input_datas: { out: { type: NORMAL } }
        output_datas:
          clean: { type: NORMAL, dest: { $USER } }
"#;

#[test]
fn a_large_value_is_handed_over_as_pages_and_no_later_write_reaches_a_reader() {
    let (p, dir) = platform("hand");
    p.upload("u", "hand__make", MAKE.as_bytes()).unwrap();
    p.upload("u", "hand__dirty", take(true).as_bytes()).unwrap();
    p.upload("u", "hand__clean", take(false).replace("\"res\\00\"", "\"clean\\00\"").replace("res\\00", "clean\\00").as_bytes()).unwrap();
    let want: Vec<u8> = (0..HANDED).map(pattern).collect();
    // Twice: the second time on reset instances, whose mappings the reset undid.
    for round in 0..2 {
        let (o, t) = run(&p, HAND, "go", b"1");
        let Outcome::Done(m) = o else { panic!("round {round}: {o:?}") };
        // The producer's write after its post reached no one; the dirty reader's write stayed its own.
        assert_eq!(m["clean"], want, "round {round}: the clean reader's copy");
        assert_eq!(m["res"][0], 238, "round {round}");
        assert_eq!(m["res"][1..], want[1..], "round {round}");
        let block = |name: &str| t.iter().find(|b| b.block == name).unwrap_or_else(|| panic!("{name}: {t:?}"));
        assert_eq!(block("hand__make.block_0").bytes_handed_out, HANDED as u64, "{t:?}");
        for reader in ["hand__dirty.block_0", "hand__clean.block_0"] {
            // The 32 whole pages mapped, the tail copied.
            assert_eq!(block(reader).bytes_mapped_in, (HANDED / 4096 * 4096) as u64, "{reader}: {t:?}");
            // A post from ordinary memory is copied.
            assert_eq!(block(reader).bytes_handed_out, 0, "{reader}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
