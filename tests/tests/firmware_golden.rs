//! Golden snapshots of the firmware (`firmware/golden/`): a fixed q8 decoder and a morph of latent
//! vectors, and the digits and 128x64 screens they must produce: on the host firmware core, on the
//! emulated Cortex-M4F (DSP kernels) and on the emulated Cortex-M0 (portable kernels).
//!
//! After an intended change of the pixels or the screen layout, rewrite the snapshots from the host
//! core, check that the boards agree, and review the diff (the frames are PBM images):
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test --release -p e2e --test firmware_golden
//! ```
//!
//! With `GOLDEN_MODEL=path/to/model.q8` as well, the model is replaced first (after a q8 format
//! change, export a run again and pass its `decoder.q8`).

use std::{env, fs, path::PathBuf};

use e2e::{
    firmware::{Board, host_outputs, run_qemu_firmware},
    scratch_dir, workspace_root,
};

fn golden_dir() -> PathBuf {
    workspace_root().join("firmware/golden")
}

fn frame_name(i: usize) -> String {
    format!("frame_{i:03}.pbm")
}

/// The golden latents: the file's bytes, and the vectors of `dim` values they hold.
fn golden_latents(dim: usize) -> (Vec<u8>, Vec<Vec<f32>>) {
    let latents_le = fs::read(golden_dir().join("latents.f32")).expect("golden latents");
    let values: Vec<f32> = latents_le
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let latents = values.chunks_exact(dim).map(<[f32]>::to_vec).collect();
    (latents_le, latents)
}

/// Runs the firmware on `board` with `model` and the latents' bytes in a fresh scratch
/// directory named after `name` and the board; returns the directory (the digits and frames it
/// wrote) and the defmt log.
fn run_board(board: Board, name: &str, model: &[u8], latents_le: &[u8]) -> (PathBuf, String) {
    let work = scratch_dir(&format!("{name}-{board:?}"));
    fs::write(work.join("model.q8"), model).expect("write model");
    fs::write(work.join("latents.f32"), latents_le).expect("write latents");
    let log = run_qemu_firmware(board, &work);
    (work, log)
}

fn assert_same(what: &str, expected: &[u8], actual: &[u8]) {
    let differing = expected.iter().zip(actual).filter(|(a, b)| a != b).count();
    assert!(
        expected == actual,
        "{what}: {differing} bytes differ (lengths {} and {}); if the change is intended, \
         update the snapshots: UPDATE_GOLDEN=1 cargo test --release -p e2e --test firmware_golden",
        expected.len(),
        actual.len()
    );
}

#[test]
fn host_core_and_qemu_boards_match_the_golden_snapshots() {
    let dir = golden_dir();
    let update = env::var_os("UPDATE_GOLDEN").is_some();
    if let (true, Some(model)) = (update, env::var_os("GOLDEN_MODEL")) {
        fs::copy(&model, dir.join("model.q8")).expect("copy GOLDEN_MODEL");
    }
    let model = fs::read(dir.join("model.q8")).expect("golden model");
    let latents_le = fs::read(dir.join("latents.f32")).expect("golden latents");
    let values: Vec<f32> = latents_le
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let dim = firmware_core::q8::Model::parse(&model)
        .expect("golden model parses")
        .latent_dim();
    let latents: Vec<Vec<f32>> = values.chunks_exact(dim).map(<[f32]>::to_vec).collect();
    let (digits, frames) = host_outputs(&model, &latents);
    let count = frames.len();
    assert!(count >= 2, "the golden morph needs several latents");
    if update {
        fs::write(dir.join("digits.gray"), &digits).expect("write digits");
        for (i, frame) in frames.iter().enumerate() {
            fs::write(dir.join(frame_name(i)), frame).expect("write frame");
        }
        eprintln!(
            "updated {count} golden digits and frames in {}",
            dir.display()
        );
    }

    // The host core against the snapshots.
    let golden_digits = fs::read(dir.join("digits.gray")).expect("golden digits");
    assert_same("host digits vs digits.gray", &golden_digits, &digits);
    let golden_frames: Vec<Vec<u8>> = (0..count)
        .map(|i| fs::read(dir.join(frame_name(i))).expect("golden frame"))
        .collect();
    for (i, (golden, frame)) in golden_frames.iter().zip(&frames).enumerate() {
        assert_same(&format!("host {}", frame_name(i)), golden, frame);
    }
    // The digits are digits, not a blank or saturated screen.
    let lit = golden_digits.iter().filter(|&&p| p >= 128).count();
    assert!(
        (count * 40..count * 400).contains(&lit),
        "{lit} stroke pixels in {count} golden digits"
    );

    // Both QEMU boards against the same snapshots.
    for board in Board::ALL {
        let (work, log) = run_board(board, "golden", &model, &latents_le);
        assert!(
            log.contains(&format!("decoded {count} latents")),
            "{board:?} defmt log:\n{log}"
        );
        let fw_digits = fs::read(work.join("digits.gray")).expect("firmware digits");
        assert_same(&format!("{board:?} digits"), &golden_digits, &fw_digits);
        for (i, golden) in golden_frames.iter().enumerate() {
            let frame = fs::read(work.join(frame_name(i))).expect("firmware frame");
            assert_same(&format!("{board:?} {}", frame_name(i)), golden, &frame);
        }
    }
}

/// The golden decoder with its ReLU layers' zero points moved from -128 to -60: the ReLU then
/// clamps inside the int8 range, which the Cortex-M4F kernels do with an extra compare (a path
/// the calibrated models, whose ReLU outputs all have zero point -128, never take). Its digits
/// on the emulated M4F and M0 must equal the host core's.
#[test]
fn relu_zero_points_above_minus_128_decode_alike_on_host_and_qemu() {
    use firmware_core::q8::{LayerSpec, Model, write};
    let golden = fs::read(golden_dir().join("model.q8")).expect("golden model");
    let model = Model::parse(&golden).expect("golden model parses");
    let moved = |zp: i8| if zp == -128 { -60 } else { zp };
    let specs: Vec<LayerSpec> = (0..model.layer_count())
        .map(|i| {
            let l = model.layer(i).expect("layer");
            let c_out = l.output.c as usize;
            let params: Vec<(i32, i32, i32)> = (0..c_out)
                .map(|o| l.params(o).expect("a channel of the layer"))
                .collect();
            let weights: Vec<i8> = l.weights().iter().map(|&b| b as i8).collect();
            // The bias holds -zp_in x the channel's weight sum: move it with the zero point.
            let zp_in = if i == 0 { 0 } else { moved(l.input_zero_point) };
            let shift = i32::from(l.input_zero_point) - i32::from(zp_in);
            let fan_in = weights.len() / c_out;
            let bias = params
                .iter()
                .zip(weights.chunks_exact(fan_in))
                .map(|(p, w)| p.0 + shift * w.iter().map(|&v| i32::from(v)).sum::<i32>());
            LayerSpec {
                kind: l.kind,
                relu: l.relu,
                input: l.input,
                output: l.output,
                // The latent's zero point stays 0 (the first layer's input).
                input_zero_point: zp_in,
                output_zero_point: if l.relu {
                    moved(l.output_zero_point)
                } else {
                    l.output_zero_point
                },
                bias: bias.collect(),
                weights,
                multiplier: params.iter().map(|p| p.1).collect(),
                shift: params.iter().map(|p| p.2).collect(),
            }
        })
        .collect();
    assert!(specs.iter().any(|s| s.relu && s.output_zero_point == -60));
    let table: &[u8; 256] = model.output_table().try_into().expect("256-entry table");
    let blob = write(model.latent_dim(), model.latent_scale(), &specs, table).expect("writes");

    let (latents_le, latents) = golden_latents(model.latent_dim());
    let (digits, _) = host_outputs(&blob, &latents);
    let distinct: std::collections::BTreeSet<u8> = digits.iter().copied().collect();
    assert!(
        distinct.len() > 20,
        "degenerate digits: {} levels",
        distinct.len()
    );
    for board in Board::ALL {
        let (work, _) = run_board(board, "relu-zero-point", &blob, &latents_le);
        let fw_digits = fs::read(work.join("digits.gray")).expect("firmware digits");
        assert_same(&format!("{board:?} digits"), &digits, &fw_digits);
    }
}

/// The golden decoder with every conv layer's folded weights copied to an odd offset (valid: the
/// format asks no alignment of them), so that the kernels take their unaligned paths: on the
/// Cortex-M4F two `ldr` where the aligned ones use `ldrd` or `ldm`, the requantization outside
/// the assembly, the last layer's leftover pairs on the portable kernel; on the host and the
/// Cortex-M0 the weights read byte by byte instead of as i16. Its digits, on the host and on
/// both QEMU boards, must be the golden ones.
#[test]
fn unaligned_folded_weights_decode_like_the_golden_model() {
    use firmware_core::q8::{Model, crc32};
    // The q8 layout (`firmware/core/Q8.md`): header, 32-byte layer records, the blob's length
    // at byte 24, a record's folded-weights offset at its byte 28, the CRC last.
    const HEADER: usize = 32;
    const RECORD: usize = 32;
    let golden = fs::read(golden_dir().join("model.q8")).expect("golden model");
    let model = Model::parse(&golden).expect("golden model parses");
    let mut blob = golden[..golden.len() - 4].to_vec();
    let mut moved = Vec::new();
    for i in 0..model.layer_count() {
        let folded = model.layer(i).expect("layer").folded();
        if folded.is_empty() {
            continue;
        }
        while blob.len() % 4 != 1 {
            blob.push(0);
        }
        let at = u32::try_from(blob.len()).expect("offset fits");
        blob.extend_from_slice(folded);
        let record = HEADER + RECORD * i;
        blob[record + 28..record + 32].copy_from_slice(&at.to_le_bytes());
        moved.push(i);
    }
    let total = u32::try_from(blob.len() + 4).expect("length fits");
    blob[24..28].copy_from_slice(&total.to_le_bytes());
    let crc = crc32(&blob);
    blob.extend_from_slice(&crc.to_le_bytes());

    let parsed = Model::parse(&blob).expect("the moved blob parses");
    assert_eq!(moved.len(), 4, "the golden decoder has 4 conv layers");
    for &i in &moved {
        let at =
            parsed.layer(i).expect("layer").folded().as_ptr() as usize - blob.as_ptr() as usize;
        assert_eq!(at % 4, 1, "layer {i}'s folded weights at blob offset {at}");
    }
    let golden_digits = fs::read(golden_dir().join("digits.gray")).expect("golden digits");
    let (latents_le, latents) = golden_latents(parsed.latent_dim());
    let (digits, _) = host_outputs(&blob, &latents);
    assert_same(
        "host digits, unaligned folded weights",
        &golden_digits,
        &digits,
    );
    for board in Board::ALL {
        let (work, _) = run_board(board, "unaligned", &blob, &latents_le);
        let fw_digits = fs::read(work.join("digits.gray")).expect("firmware digits");
        assert_same(
            &format!("{board:?} digits, unaligned"),
            &golden_digits,
            &fw_digits,
        );
    }
}
