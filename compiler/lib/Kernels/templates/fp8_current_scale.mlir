// Current scaling's scale of one quantized tensor (@FORMAT@), from the amax
// that fp8_amax has just taken, as the reference interpreter's
// llama.fp8_quantize without a scale operand:
//   scale[0] = f32((@FMAX@ / f64(a)) * 2^-margin)   if 0 < a < inf,
//              1                                    otherwise (zero, inf,
//                                                   NaN)
//   scale_inv[0] = 1 / scale[0]                     (f32)
// a = amax[0] (f32). The quotient is taken in f64, as the reference does and
// as fp8_scale_update, so the scale is the reference's bit for bit. Thread
// 0 of one warp.
// Reads amax (f32 [1]); writes scale (f32 [1]) and scale_inv (f32 [1], the
// first of its 16-byte row).
// Launch: grid [1], block [32].
  gpu.func @@KERNEL@(%amax: memref<1xf32>, %scale: memref<1xf32>, %scaleInv: memref<1xf32>) kernel
      attributes {known_block_size = array<i32: 32, 1, 1>} {
    %c0 = arith.constant 0 : index
    %tid = gpu.thread_id x
    %first = arith.cmpi eq, %tid, %c0 : index
    scf.if %first {
      %zero = arith.constant 0.0 : f32
      %one = arith.constant 1.0 : f32
      %inf = arith.constant 0x7F800000 : f32
      %fmax = arith.constant @FMAX@ : f64
      %marginScale = arith.constant @MARGIN_SCALE@ : f64
      %a = memref.load %amax[%c0] : memref<1xf32>
      %positive = arith.cmpf ogt, %a, %zero : f32
      %finite = arith.cmpf olt, %a, %inf : f32
      %usable = arith.andi %positive, %finite : i1
      %a64 = arith.extf %a : f32 to f64
      %q = arith.divf %fmax, %a64 : f64
      %qm = arith.mulf %q, %marginScale : f64
      %fresh = arith.truncf %qm : f64 to f32
      %s = arith.select %usable, %fresh, %one : f32
      %inverse = arith.divf %one, %s : f32
      memref.store %s, %scale[%c0] : memref<1xf32>
      memref.store %inverse, %scaleInv[%c0] : memref<1xf32>
    }
    gpu.return
  }
