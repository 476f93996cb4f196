// The rotation of rope's pair j at position pos, ggml's way (rope.wgsl's
// header): theta = freq_scale * (pos * theta_scale^j), the power by j f32
// multiplications, reduced to [-pi, pi] before cos and sin. Returns
// (cos, sin). Shared by rope.wgsl and qmatvec.wgsl's rope epilogue.

// 2 pi split so that k * TWO_PI_HI is exact for |k| < 2^16 and the sum
// carries 2 pi to ~48 bits: the reduced angle is as exact as theta itself.
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 1.935307179586232e-3;
const INV_TWO_PI: f32 = 0.15915494309189535;

// Vulkan's sin and cos are only accurate on [-pi, pi] (and approximations
// on NVIDIA lose it fast outside): reduce first, like libm's sinf does.
fn reduce_angle(theta: f32) -> f32 {
    let k = round(theta * INV_TWO_PI);
    return (theta - k * TWO_PI_HI) - k * TWO_PI_LO;
}

fn rope_cs(pos: i32, j: u32, theta_scale: f32, freq_scale: f32) -> vec2<f32> {
    var theta = f32(pos);
    for (var s = 0u; s < j; s++) {
        theta *= theta_scale;
    }
    let a = reduce_angle(freq_scale * theta);
    return vec2<f32>(cos(a), sin(a));
}
