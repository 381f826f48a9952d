//! CPU time of background removal at upstream's 1024² input: the tiny golden BiRefNet through
//! the whole wrapper (resize, normalise, network, sigmoid, resize back), then — with `--release`
//! — the released Swin-L width (zero weights: the arithmetic is the same dense work, so the
//! time is the real model's). Run with `cargo bench --bench birefnet [-- --release]`.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use trellis2::image::RgbImage;
use trellis2::models::birefnet::swin::SwinBackbone;
use trellis2::models::birefnet::{BiRefNet, BiRefNetConfig, PatchOrder, SwinConfig};
use trellis2::models::trace::Trace;
use trellis2::ops::{deform_conv2d, DeformConvConfig};
use trellis2::pipeline::matte::{alpha_matte_at, network_input, MATTE_SIZE};

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Zero weights of any requested shape; the relative position index (read without a shape) is
/// a zero `[w², w²]` integer table.
struct ZeroWeights {
    window: usize,
}

impl SimpleBackend for ZeroWeights {
    fn get(
        &self,
        s: Shape,
        _: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if !name.ends_with("relative_position_index") {
            candle_core::bail!("{name}: no shape");
        }
        let n = self.window * self.window;
        Tensor::zeros((n, n), dtype, dev)
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

fn released_config() -> BiRefNetConfig {
    BiRefNetConfig {
        swin: SwinConfig {
            in_chans: 3,
            patch_size: 4,
            embed_dim: 192,
            depths: vec![2, 2, 18, 2],
            num_heads: vec![6, 12, 24, 48],
            window_size: 12,
            mlp_hidden: vec![768, 1536, 3072, 6144],
        },
        dec_inter: 64,
        aspp_planes: 256,
        aspp_kernels: vec![1, 3, 7],
        ipt_inter: 64,
        ipt_out: [384, 384, 192, 96, 48],
        gdt_channels: 16,
        patch_order: PatchOrder::Rmbg,
    }
}

fn picture() -> RgbImage {
    let (w, h) = (1024u32, 768u32);
    let data = (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [(x / 4) as u8, (y / 3) as u8, ((x + y) / 7) as u8]
        })
        .collect();
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

fn main() {
    let dev = Device::Cpu;
    println!("threads: {}", rayon::current_num_threads());
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden/birefnet");
    let tiny = BiRefNet::open(&dir, &dev).expect("golden tiny model");
    let rgb = picture();
    let start = Instant::now();
    let input = network_input(&rgb, MATTE_SIZE, MATTE_SIZE, &dev).unwrap();
    let t_in = start.elapsed().as_secs_f64();
    let start = Instant::now();
    tiny.forward(&input).unwrap();
    let t_net = start.elapsed().as_secs_f64();
    let start = Instant::now();
    alpha_matte_at(&tiny, &rgb, (MATTE_SIZE, MATTE_SIZE)).unwrap();
    let t_all = start.elapsed().as_secs_f64();
    println!(
        "tiny model, 1024×768 picture at 1024²: input {t_in:.2} s, network {t_net:.2} s, \
         whole matte {t_all:.2} s, peak RSS {:.0} MiB",
        peak_rss_mib()
    );
    if std::env::args().any(|a| a == "--stages") {
        stages(&tiny, &input);
    }
    if std::env::args().any(|a| a == "--release") {
        let cfg = released_config();
        let vb = candle_nn::VarBuilder::from_backend(
            Box::new(ZeroWeights { window: 12 }),
            DType::F32,
            dev.clone(),
        );
        let model = BiRefNet::new(&cfg, vb).expect("released-width model");
        let start = Instant::now();
        let logits = model.forward(&input).unwrap();
        println!(
            "released Swin-L width at 1024²: network {:.1} s, logits {:?}, peak RSS {:.0} MiB",
            start.elapsed().as_secs_f64(),
            logits.dims(),
            peak_rss_mib()
        );
    }
}

/// Where the tiny model's time goes at 1024²: the backbone alone, and the largest deformable
/// conv (decoder level 1, 7×7 at 256²).
fn stages(tiny: &BiRefNet, input: &Tensor) {
    let dev = Device::Cpu;
    let vb = candle_nn::VarBuilder::from_backend(
        Box::new(ZeroWeights { window: 12 }),
        DType::F32,
        dev.clone(),
    );
    let bb = SwinBackbone::new(&tiny.config().swin, vb).unwrap();
    let start = Instant::now();
    bb.forward(input, "bb", &mut Trace::off()).unwrap();
    println!(
        "tiny backbone at 1024²: {:.2} s",
        start.elapsed().as_secs_f64()
    );
    let c = tiny.config().dec_inter;
    let x = Tensor::ones((1, c, 256, 256), DType::F32, &dev).unwrap();
    let offset = Tensor::ones((1, 98, 256, 256), DType::F32, &dev).unwrap();
    let mask = Tensor::ones((1, 49, 256, 256), DType::F32, &dev).unwrap();
    let w = Tensor::ones((tiny.config().aspp_planes, c, 7, 7), DType::F32, &dev).unwrap();
    let cfg = DeformConvConfig {
        padding: (3, 3),
        ..Default::default()
    };
    let start = Instant::now();
    deform_conv2d(&x, &offset, &mask, &w, None, cfg).unwrap();
    println!(
        "deform conv 7×7, {c} → {} channels at 256²: {:.2} s",
        tiny.config().aspp_planes,
        start.elapsed().as_secs_f64()
    );
}
