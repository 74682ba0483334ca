// NumPy .npy files (https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html).
//
// A .npy file is: the magic "\x93NUMPY", a major and a minor version byte, the header length
// (uint16 little-endian in version 1.0, uint32 in 2.0 and 3.0), then an ASCII Python dict
//     {'descr': '<f4', 'fortran_order': False, 'shape': (16, 1, 8, 8), }
// padded with spaces and a final '\n' so that the data starts at a multiple of 64 bytes, then
// the raw array data in the order and byte order that 'descr' and 'fortran_order' give.
#pragma once

#include <string>

#include "vae_deploy/tensor.hpp"

namespace vae {

/// Reads a C-order float32 or float64 array of either byte order (descr '<f4', '>f4', '<f8',
/// '>f8'), format 1.0 to 3.0; float64 is rounded to float32. Throws Error naming the file and
/// what it holds when it is anything else (another dtype, Fortran order, truncated data).
Tensor read_npy(const std::string& path);

/// Writes format 1.0, descr '<f4' (little-endian float32), C order, whatever the host's byte
/// order. numpy.load reads it as float32 of the tensor's shape.
void write_npy(const std::string& path, const Tensor& tensor);

}  // namespace vae
