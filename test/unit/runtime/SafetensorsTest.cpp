//===- SafetensorsTest.cpp - Tests of safetensors I/O and conversions -----===//

#include "llamac/Runtime/Safetensors.h"

#include "TestUtil.h"

#include <cmath>
#include <cstring>
#include <limits>

#include <csignal>
#include <sys/resource.h>

using namespace llamac;
using llamac::test::isErrorAbout;
using llamac::test::TempDirTest;

namespace {

constexpr DType allDTypes[] = {DType::F64,  DType::F32, DType::F16,
                               DType::BF16, DType::I32, DType::I64};

uint32_t floatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

float bitsFloat(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

/// A safetensors file: 8-byte little-endian length, \p header, then
/// \p dataSize bytes of data.
std::string safetensorsBytes(const std::string &header, size_t dataSize) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i)
    bytes[i] = char(uint64_t(header.size()) >> (8 * i));
  return bytes + header + std::string(dataSize, '\x5A');
}

/// A tensor of \p dtype and \p shape whose bytes follow a fixed pseudo-random
/// pattern (so every kind of bit pattern, NaN payloads included, occurs).
HostTensor patternTensor(const std::string &name, DType dtype,
                         std::vector<int64_t> shape, uint32_t seed) {
  HostTensor tensor;
  tensor.name = name;
  tensor.dtype = dtype;
  tensor.shape = std::move(shape);
  tensor.bytes.resize(size_t(tensor.numel() * dtypeSize(dtype)));
  uint32_t state = seed;
  for (uint8_t &byte : tensor.bytes) {
    state = state * 1664525u + 1013904223u;
    byte = uint8_t(state >> 24);
  }
  return tensor;
}

//===----------------------------------------------------------------------===//
// DType and conversions
//===----------------------------------------------------------------------===//

TEST(DTypeTest, ParsesNamesAndKnowsSizes) {
  const int64_t sizes[] = {8, 4, 2, 2, 4, 8};
  for (size_t i = 0; i < std::size(allDTypes); ++i) {
    DType dtype = allDTypes[i];
    EXPECT_EQ(parseDType(dtypeName(dtype)), dtype);
    EXPECT_EQ(dtypeSize(dtype), sizes[i]) << dtypeName(dtype);
  }
  EXPECT_EQ(parseDType("BF16"), DType::BF16);
  EXPECT_FALSE(parseDType("bf16"));
  EXPECT_FALSE(parseDType("F8_E4M3"));
  EXPECT_FALSE(parseDType("U8"));
  EXPECT_FALSE(parseDType(""));
}

TEST(BF16Test, RoundsToNearestEven) {
  EXPECT_EQ(floatToBF16(1.0f), 0x3F80);
  // 1 + 2^-8 lies halfway between 1 (even) and 1 + 2^-7 (odd).
  EXPECT_EQ(floatToBF16(1.0f + 0x1p-8f), 0x3F80);
  // 1 + 3 * 2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even).
  EXPECT_EQ(floatToBF16(1.0f + 0x3p-8f), 0x3F82);
  EXPECT_EQ(floatToBF16(1.0f + 0x1p-8f + 0x1p-20f), 0x3F81);
  EXPECT_EQ(floatToBF16(1.0f + 0x1p-9f), 0x3F80);
  // Rounding up carries into the exponent.
  EXPECT_EQ(floatToBF16(bitsFloat(0x3FFFFFFF)), 0x4000);
  EXPECT_EQ(floatToBF16(-2.5f), 0xC020);
  EXPECT_EQ(floatToBF16(-0.0f), 0x8000);
  // Subnormal floats keep their upper bits.
  EXPECT_EQ(floatToBF16(0x1p-130f), 0x0008);
}

TEST(BF16Test, OverflowInfinityAndNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(floatToBF16(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(floatToBF16(inf), 0x7F80);
  EXPECT_EQ(floatToBF16(-inf), 0xFF80);
  // A NaN whose payload lies only in the dropped bits must stay NaN, not
  // round to infinity.
  for (uint32_t bits : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu}) {
    const uint16_t half = floatToBF16(bitsFloat(bits));
    EXPECT_EQ(half & 0x7F80, 0x7F80) << std::hex << bits;
    EXPECT_NE(half & 0x007F, 0) << std::hex << bits;
    EXPECT_TRUE(std::isnan(bf16ToFloat(half)));
  }
}

TEST(BF16Test, DoubleRoundsOnlyOnce) {
  // Through float, 1 + 2^-8 + 2^-40 first becomes the tie 1 + 2^-8 and then
  // rounds down; rounded directly it lies above the tie and rounds up.
  const double value = 1.0 + 0x1p-8 + 0x1p-40;
  EXPECT_EQ(floatToBF16(float(value)), 0x3F80);
  EXPECT_EQ(doubleToBF16(value), 0x3F81);
  EXPECT_EQ(bf16ToFloat(0x3F81), 1.0f + 0x1p-7f);
}

TEST(BF16Test, EveryBF16ValueRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = bf16ToFloat(uint16_t(bits));
    ASSERT_EQ(floatBits(value), bits << 16);
    if (!std::isnan(value)) {
      ASSERT_EQ(floatToBF16(value), bits) << std::hex << bits;
    }
  }
}

TEST(HalfTest, RoundsToNearestEven) {
  EXPECT_EQ(floatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(floatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(floatToHalf(0.1f), 0x2E66);
  EXPECT_EQ(floatToHalf(1.0f + 0x1p-11f), 0x3C00);
  EXPECT_EQ(floatToHalf(1.0f + 0x3p-11f), 0x3C02);
  EXPECT_EQ(floatToHalf(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
  EXPECT_EQ(floatToHalf(-0.0f), 0x8000);
}

TEST(HalfTest, SubnormalsOverflowAndNaN) {
  EXPECT_EQ(floatToHalf(0x1p-24f), 0x0001);
  // Half of the smallest subnormal is a tie that rounds to (even) zero.
  EXPECT_EQ(floatToHalf(0x1p-25f), 0x0000);
  EXPECT_EQ(floatToHalf(-0x1p-25f), 0x8000);
  EXPECT_EQ(floatToHalf(0x3p-26f), 0x0001);
  EXPECT_EQ(floatToHalf(0x3p-25f), 0x0002);
  EXPECT_EQ(floatToHalf(0x1p-30f), 0x0000);
  EXPECT_EQ(floatToHalf(1023 * 0x1p-24f), 0x03FF);
  // Halfway between the largest subnormal and the smallest normal.
  EXPECT_EQ(floatToHalf(1023.5f * 0x1p-24f), 0x0400);
  EXPECT_EQ(floatToHalf(0x1p-14f), 0x0400);
  EXPECT_EQ(floatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(floatToHalf(65519.0f), 0x7BFF);
  EXPECT_EQ(floatToHalf(65520.0f), 0x7C00);
  EXPECT_EQ(floatToHalf(1e6f), 0x7C00);
  EXPECT_EQ(floatToHalf(-1e6f), 0xFC00);
  EXPECT_EQ(floatToHalf(-std::numeric_limits<float>::infinity()), 0xFC00);
  const uint16_t nan = floatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  EXPECT_TRUE(std::isnan(halfToFloat(floatToHalf(bitsFloat(0x7F800001)))));

  EXPECT_EQ(halfToFloat(0x0001), 0x1p-24f);
  EXPECT_EQ(halfToFloat(0x03FF), 1023 * 0x1p-24f);
  EXPECT_EQ(halfToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(halfToFloat(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(floatBits(halfToFloat(0x8000)), 0x80000000u);
  EXPECT_TRUE(std::isnan(halfToFloat(0x7E00)));
}

TEST(HalfTest, DoubleRoundsOnlyOnce) {
  const double value = 1.0 + 0x1p-11 + 0x1p-40;
  EXPECT_EQ(floatToHalf(float(value)), 0x3C00);
  EXPECT_EQ(doubleToHalf(value), 0x3C01);
}

TEST(HalfTest, EveryHalfValueRoundTrips) {
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {
    const float value = halfToFloat(uint16_t(bits));
    if (std::isnan(value)) {
      ASSERT_EQ(bits & 0x7C00, 0x7C00u) << std::hex << bits;
    } else {
      ASSERT_EQ(floatToHalf(value), bits) << std::hex << bits;
    }
  }
}

//===----------------------------------------------------------------------===//
// HostTensor
//===----------------------------------------------------------------------===//

TEST(HostTensorTest, Numel) {
  HostTensor scalar = HostTensor::fromDouble("s", DType::F32, {}, {2.0});
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(scalar.bytes.size(), 4u);
  HostTensor empty = HostTensor::fromDouble("e", DType::F32, {2, 0, 3}, {});
  EXPECT_EQ(empty.numel(), 0);
  EXPECT_EQ(patternTensor("p", DType::BF16, {3, 5}, 1).numel(), 15);
}

TEST(HostTensorTest, FromDoubleRoundsFloats) {
  const double inf = std::numeric_limits<double>::infinity();
  HostTensor f32 = HostTensor::fromDouble(
      "f", DType::F32, {4}, {1.0 + 0x1p-24, 1.0 + 0x3p-24, 1e300, -0.0});
  std::vector<double> back = f32.toDouble();
  EXPECT_EQ(back[0], 1.0);
  EXPECT_EQ(back[1], 1.0 + 0x1p-22);
  EXPECT_EQ(back[2], inf);
  EXPECT_TRUE(std::signbit(back[3]));

  HostTensor bf16 =
      HostTensor::fromDouble("b", DType::BF16, {3}, {1.0 + 0x1p-8, 3.0, -inf});
  EXPECT_EQ(bf16.toDouble(), (std::vector<double>{1.0, 3.0, -inf}));
  HostTensor f16 =
      HostTensor::fromDouble("h", DType::F16, {3}, {0x1p-24, 70000.0, 0.5});
  EXPECT_EQ(f16.toDouble(), (std::vector<double>{0x1p-24, inf, 0.5}));
  HostTensor f64 = HostTensor::fromDouble("d", DType::F64, {1}, {0.1});
  EXPECT_EQ(f64.toDouble(), std::vector<double>{0.1});
}

TEST(HostTensorTest, FromDoubleRoundsAndSaturatesIntegers) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  HostTensor i32 = HostTensor::fromDouble(
      "i", DType::I32, {7}, {2.5, 3.5, -2.5, 1e20, -1e20, nan, -7.0});
  EXPECT_EQ(i32.toDouble(), (std::vector<double>{2, 4, -2, 2147483647.0,
                                                 -2147483648.0, 0, -7}));
  HostTensor i64 =
      HostTensor::fromDouble("l", DType::I64, {3}, {0x1p62, 0x1p63, -0x1p64});
  int64_t values[3];
  std::memcpy(values, i64.bytes.data(), sizeof(values));
  EXPECT_EQ(values[0], int64_t(1) << 62);
  EXPECT_EQ(values[1], std::numeric_limits<int64_t>::max());
  EXPECT_EQ(values[2], std::numeric_limits<int64_t>::min());
}

//===----------------------------------------------------------------------===//
// Writing and reading back
//===----------------------------------------------------------------------===//

using SafetensorsTest = TempDirTest;

TEST_F(SafetensorsTest, RoundTripsEveryDTypeBitExactly) {
  std::vector<HostTensor> tensors;
  uint32_t seed = 1;
  for (DType dtype : allDTypes)
    tensors.push_back(patternTensor(std::string("t.") + dtypeName(dtype), dtype,
                                    {3, 7}, seed++));
  tensors.push_back(patternTensor("scalar", DType::BF16, {}, seed++));
  tensors.push_back(patternTensor("empty", DType::F32, {0, 4}, seed++));
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"step", "12"}};
  const std::string file = path("model.safetensors");
  Status written = writeSafetensors(file, tensors, metadata);
  ASSERT_TRUE(written) << written.error().message;

  Result<SafetensorsFile> opened = SafetensorsFile::open(file);
  ASSERT_TRUE(opened) << opened.error().message;
  EXPECT_EQ(opened->metadata(), metadata);
  ASSERT_EQ(opened->tensors().size(), tensors.size());
  for (const HostTensor &expected : tensors) {
    Result<HostTensor> got = opened->read(expected.name);
    ASSERT_TRUE(got) << got.error().message;
    EXPECT_EQ(got->name, expected.name);
    EXPECT_EQ(got->dtype, expected.dtype) << expected.name;
    EXPECT_EQ(got->shape, expected.shape) << expected.name;
    EXPECT_EQ(got->bytes, expected.bytes) << expected.name;
  }
}

TEST_F(SafetensorsTest, WritesStandardLayout) {
  std::vector<HostTensor> tensors = {
      HostTensor::fromDouble("z.second_in_name_order", DType::F32, {2}, {1, 2}),
      HostTensor::fromDouble("a.first_in_name_order", DType::BF16, {3},
                             {3, 4, 5})};
  const std::string file = path("layout.safetensors");
  ASSERT_TRUE(writeSafetensors(file, tensors));
  const std::string bytes = readFile(file);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t headerLength = 0;
  for (int i = 7; i >= 0; --i)
    headerLength = (headerLength << 8) | uint8_t(bytes[i]);
  EXPECT_EQ(headerLength % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + headerLength + 8 + 6);
  const std::string header = bytes.substr(8, headerLength);
  EXPECT_EQ(header.front(), '{');
  // The JSON ends with '}', then fewer than 8 spaces of padding.
  const size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - 1 - last, 8u);

  // Data lies contiguously in the given order, not in name order.
  Result<SafetensorsFile> opened = SafetensorsFile::open(file);
  ASSERT_TRUE(opened) << opened.error().message;
  const TensorInfo *first = opened->find("z.second_in_name_order");
  const TensorInfo *second = opened->find("a.first_in_name_order");
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->begin, 0u);
  EXPECT_EQ(first->end, 8u);
  EXPECT_EQ(second->begin, 8u);
  EXPECT_EQ(second->end, 14u);
  EXPECT_EQ(opened->tensors().front().name, "z.second_in_name_order");
  EXPECT_EQ(bytes.substr(8 + headerLength, 8),
            std::string(tensors[0].bytes.begin(), tensors[0].bytes.end()));
}

TEST_F(SafetensorsTest, WriterRejectsInconsistentTensors) {
  HostTensor good = HostTensor::fromDouble("w", DType::F32, {2}, {1, 2});
  HostTensor shortData = good;
  shortData.name = "short";
  shortData.bytes.pop_back();
  HostTensor reserved = good;
  reserved.name = "__metadata__";
  const std::string file = path("bad.safetensors");

  Status mismatch = writeSafetensors(file, {good, shortData});
  ASSERT_FALSE(mismatch);
  EXPECT_TRUE(isErrorAbout(mismatch.error().message, file,
                           "tensor 'short': holds 7 bytes, but F32 [2] "
                           "needs 8"));
  Status duplicate = writeSafetensors(file, {good, good});
  ASSERT_FALSE(duplicate);
  EXPECT_TRUE(isErrorAbout(duplicate.error().message, file,
                           "tensor 'w': the name occurs twice"));
  Status metadataName = writeSafetensors(file, {reserved});
  ASSERT_FALSE(metadataName);
  EXPECT_TRUE(
      isErrorAbout(metadataName.error().message, file, "'__metadata__'"));
  EXPECT_TRUE(listDir().empty());
}

TEST_F(SafetensorsTest, ReadsOneTensorAtATime) {
  const std::string file = path("two.safetensors");
  ASSERT_TRUE(writeSafetensors(
      file, {HostTensor::fromDouble("a", DType::F32, {2}, {1, 2}),
             HostTensor::fromDouble("b", DType::F64, {1, 2}, {3, 4})}));
  Result<SafetensorsFile> opened = SafetensorsFile::open(file);
  ASSERT_TRUE(opened) << opened.error().message;
  Result<HostTensor> b = opened->read("b");
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->toDouble(), (std::vector<double>{3, 4}));
  EXPECT_EQ(b->shape, (std::vector<int64_t>{1, 2}));

  Result<HostTensor> missing = opened->read("c");
  ASSERT_FALSE(missing);
  EXPECT_TRUE(
      isErrorAbout(missing.error().message, file, "no tensor named 'c'"));
}

TEST_F(SafetensorsTest, ReadReportsFileTruncatedAfterOpen) {
  const std::string file = path("shrinks.safetensors");
  ASSERT_TRUE(writeSafetensors(
      file, {HostTensor::fromDouble("w", DType::F32, {4}, {1, 2, 3, 4})}));
  Result<SafetensorsFile> opened = SafetensorsFile::open(file);
  ASSERT_TRUE(opened) << opened.error().message;
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 4);
  Result<HostTensor> read = opened->read("w");
  ASSERT_FALSE(read);
  EXPECT_TRUE(isErrorAbout(read.error().message, file, "tensor 'w': "));
  EXPECT_TRUE(isErrorAbout(read.error().message, file, "the file ends"));
}

TEST_F(SafetensorsTest, AcceptsScalarsAndEmptyTensorsSharingOffsets) {
  const std::string file =
      writeFile("edge.safetensors",
                safetensorsBytes(R"({"s": {"dtype": "F32", "shape": [], )"
                                 R"("data_offsets": [0, 4]}, )"
                                 R"("e": {"dtype": "I64", "shape": [0, 3], )"
                                 R"("data_offsets": [2, 2]}})",
                                 4));
  Result<SafetensorsFile> opened = SafetensorsFile::open(file);
  ASSERT_TRUE(opened) << opened.error().message;
  ASSERT_EQ(opened->tensors().size(), 2u);
  EXPECT_EQ(opened->find("s")->numel(), 1);
  EXPECT_EQ(opened->find("e")->numel(), 0);
  Result<HostTensor> empty = opened->read("e");
  ASSERT_TRUE(empty) << empty.error().message;
  EXPECT_TRUE(empty->bytes.empty());
}

TEST_F(SafetensorsTest, OpenReportsMissingFileAndDirectory) {
  const std::string missing = path("missing.safetensors");
  Result<SafetensorsFile> notThere = SafetensorsFile::open(missing);
  ASSERT_FALSE(notThere);
  EXPECT_TRUE(isErrorAbout(notThere.error().message, missing, "cannot open"));
  Result<SafetensorsFile> directory = SafetensorsFile::open(dir);
  ASSERT_FALSE(directory);
  EXPECT_TRUE(isErrorAbout(directory.error().message, dir, "directory"));
}

TEST_F(SafetensorsTest, HeaderLengthPastEndHasExactMessage) {
  std::string bytes(8, '\0');
  bytes[0] = char(99999 & 0xFF);
  bytes[1] = char((99999 >> 8) & 0xFF);
  bytes[2] = char(99999 >> 16);
  bytes += std::string(1226, ' ');
  const std::string file = writeFile("model.safetensors", bytes);
  Result<SafetensorsFile> opened = SafetensorsFile::open(file);
  ASSERT_FALSE(opened);
  EXPECT_EQ(opened.error().message,
            file + ": header length 99999 runs past the end of the file "
                   "(1234 bytes)");
}

TEST_F(SafetensorsTest, SizeMismatchHasExactMessage) {
  const std::string file = writeFile(
      "model.safetensors",
      safetensorsBytes(R"({"model.norm.weight": {"dtype": "BF16", )"
                       R"("shape": [4096], "data_offsets": [0, 10]}})",
                       10));
  Result<SafetensorsFile> opened = SafetensorsFile::open(file);
  ASSERT_FALSE(opened);
  EXPECT_EQ(opened.error().message,
            file + ": tensor 'model.norm.weight': data_offsets [0, 10] hold "
                   "10 bytes, but BF16 [4096] needs 8192");
}

//===----------------------------------------------------------------------===//
// Corrupt files
//===----------------------------------------------------------------------===//

struct CorruptCase {
  const char *name;
  std::string bytes;
  const char *expected;
};

/// Names the case in test output.
void PrintTo(const CorruptCase &c, std::ostream *os) { *os << c.name; }

/// A file whose header has one entry "w" with the given fields and \p data
/// bytes of data.
std::string entryFile(const std::string &fields, size_t data = 8) {
  return safetensorsBytes(R"({"w": {)" + fields + "}}", data);
}

const std::string goodShape = R"("shape": [2], )";
const std::string goodDtype = R"("dtype": "F32", )";
const std::string goodOffsets = R"("data_offsets": [0, 8])";

const CorruptCase corruptCases[] = {
    {"EmptyFile", "", "file is 0 bytes, too short for the 8-byte header"},
    {"ShorterThanLength", "\x01\x02\x03\x04\x05", "file is 5 bytes, too short"},
    {"HugeHeaderLength", std::string(8, '\xFF') + "{}",
     "header length 18446744073709551615 runs past the end of the file "
     "(10 bytes)"},
    {"HeaderNotJson", safetensorsBytes(R"({"w": )", 0),
     "header is not valid JSON: parse error"},
    {"HeaderNotObject", safetensorsBytes("[1, 2]", 0),
     "header is [1,2], not a JSON object"},
    {"EntryNotObject", safetensorsBytes(R"({"w": 3})", 0),
     "tensor 'w': entry is 3, not an object"},
    {"MissingDtype", entryFile(goodShape + goodOffsets),
     "tensor 'w': missing 'dtype'"},
    {"DtypeNotString", entryFile(R"("dtype": 5, )" + goodShape + goodOffsets),
     "tensor 'w': dtype is 5, not a string"},
    {"UnknownDtype",
     entryFile(R"("dtype": "F8_E4M3", )" + goodShape + goodOffsets),
     "tensor 'w': unknown dtype \"F8_E4M3\""},
    {"MissingShape", entryFile(goodDtype + goodOffsets),
     "tensor 'w': missing 'shape'"},
    {"ShapeNotArray", entryFile(goodDtype + R"("shape": 2, )" + goodOffsets),
     "tensor 'w': shape is 2, not an array"},
    {"NegativeDimension",
     entryFile(goodDtype + R"("shape": [2, -1], )" + goodOffsets),
     "tensor 'w': shape[1] is -1, not a non-negative integer"},
    {"FractionalDimension",
     entryFile(goodDtype + R"("shape": [2.5], )" + goodOffsets),
     "tensor 'w': shape[0] is 2.5, not a non-negative integer"},
    {"ShapeTooLarge",
     entryFile(goodDtype + R"("shape": [4611686018427387904, 4], )" +
               goodOffsets),
     "tensor 'w': F32 [4611686018427387904, 4] is too large"},
    {"MissingOffsets", entryFile(goodDtype + R"("shape": [2])"),
     "tensor 'w': missing 'data_offsets'"},
    {"OffsetsNotPair",
     entryFile(goodDtype + goodShape + R"("data_offsets": [0])"),
     "tensor 'w': data_offsets is [0], not an array [begin, end]"},
    {"NegativeOffset",
     entryFile(goodDtype + goodShape + R"("data_offsets": [-4, 4])"),
     "tensor 'w': data_offsets[0] is -4, not a non-negative integer"},
    {"OffsetNotInteger",
     entryFile(goodDtype + goodShape + R"("data_offsets": [0, "8"])"),
     "tensor 'w': data_offsets[1] is \"8\", not a non-negative integer"},
    {"BeginAfterEnd",
     entryFile(goodDtype + goodShape + R"("data_offsets": [8, 0])"),
     "tensor 'w': data_offsets [8, 0] begin after they end"},
    {"EndPastData", entryFile(goodDtype + goodShape + goodOffsets, 6),
     "tensor 'w': data_offsets [0, 8] run past the end of the data (6 bytes)"},
    {"ByteSizeMismatch",
     entryFile(goodDtype + R"("shape": [3], )" + goodOffsets),
     "tensor 'w': data_offsets [0, 8] hold 8 bytes, but F32 [3] needs 12"},
    {"Overlap",
     safetensorsBytes(
         R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
         R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
         12),
     "tensor 'b': data_offsets [4, 12] overlap tensor 'a' at [0, 8]"},
    {"MetadataNotObject", safetensorsBytes(R"({"__metadata__": [1]})", 0),
     "__metadata__ is [1], not an object"},
    {"MetadataValueNotString",
     safetensorsBytes(R"({"__metadata__": {"format": 1}})", 0),
     "__metadata__['format'] is 1, not a string"},
    {"ControlCharacterInName", safetensorsBytes(R"({"a\nb": 1})", 0),
     "tensor 'a\\x0Ab': entry is 1, not an object"},
};

class CorruptFileTest : public TempDirTest,
                        public ::testing::WithParamInterface<CorruptCase> {};

TEST_P(CorruptFileTest, IsRejectedWithOneLineMessage) {
  const std::string file = writeFile("model.safetensors", GetParam().bytes);
  Result<SafetensorsFile> opened = SafetensorsFile::open(file);
  ASSERT_FALSE(opened);
  EXPECT_TRUE(isErrorAbout(opened.error().message, file, GetParam().expected));
  // The weight store reports the same problem.
  Result<WeightStore> store = WeightStore::open(file);
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().message, opened.error().message);
}

INSTANTIATE_TEST_SUITE_P(
    Safetensors, CorruptFileTest, ::testing::ValuesIn(corruptCases),
    [](const ::testing::TestParamInfo<CorruptCase> &param) {
      return std::string(param.param.name);
    });

//===----------------------------------------------------------------------===//
// Sharded checkpoints and directories
//===----------------------------------------------------------------------===//

class ShardedTest : public TempDirTest {
protected:
  void SetUp() override {
    TempDirTest::SetUp();
    ASSERT_TRUE(writeSafetensors(
        path(shard1),
        {HostTensor::fromDouble("embed", DType::BF16, {2, 2}, {1, 2, 3, 4}),
         HostTensor::fromDouble("norm", DType::F32, {2}, {5, 6})}));
    ASSERT_TRUE(writeSafetensors(
        path(shard2),
        {HostTensor::fromDouble("head", DType::F16, {3}, {7, 8, 9})}));
  }

  /// Writes model.safetensors.index.json with \p weightMap as its
  /// "weight_map" value; returns its path.
  std::string writeIndex(const std::string &weightMap) {
    return writeFile(indexName, R"({"metadata": {"total_size": 26}, )"
                                R"("weight_map": )" +
                                    weightMap + "}");
  }

  /// A weight map that matches the shards written in SetUp().
  static std::string goodMap() {
    return R"({"embed": ")" + shard1 + R"(", "norm": ")" + shard1 +
           R"(", "head": ")" + shard2 + R"("})";
  }

  /// Checks that opening \p index fails with \p expected about \p file.
  static void expectOpenError(const std::string &index, const std::string &file,
                              const std::string &expected) {
    Result<WeightStore> store = WeightStore::open(index);
    ASSERT_FALSE(store);
    EXPECT_TRUE(isErrorAbout(store.error().message, file, expected));
  }

  static inline const std::string shard1 = "model-00001-of-00002.safetensors";
  static inline const std::string shard2 = "model-00002-of-00002.safetensors";
  static inline const std::string indexName = "model.safetensors.index.json";
};

TEST_F(ShardedTest, OpensIndexAndReadsFromEachShard) {
  const std::string index = writeIndex(goodMap());
  Result<WeightStore> store = WeightStore::open(index);
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_EQ(store->path(), index);
  std::vector<std::string> names;
  for (const TensorInfo &info : store->tensors())
    names.push_back(info.name);
  EXPECT_EQ(names, (std::vector<std::string>{"embed", "head", "norm"}));
  ASSERT_NE(store->find("head"), nullptr);
  EXPECT_EQ(store->find("head")->dtype, DType::F16);
  EXPECT_EQ(store->find("head")->shape, std::vector<int64_t>{3});
  EXPECT_EQ(store->find("absent"), nullptr);

  Result<HostTensor> head = store->read("head");
  ASSERT_TRUE(head) << head.error().message;
  EXPECT_EQ(head->toDouble(), (std::vector<double>{7, 8, 9}));
  Result<HostTensor> embed = store->read("embed");
  ASSERT_TRUE(embed) << embed.error().message;
  EXPECT_EQ(embed->toDouble(), (std::vector<double>{1, 2, 3, 4}));
  Result<HostTensor> absent = store->read("absent");
  ASSERT_FALSE(absent);
  EXPECT_TRUE(
      isErrorAbout(absent.error().message, index, "no tensor named 'absent'"));
}

TEST_F(ShardedTest, DirectoryResolvesToIndex) {
  writeIndex(goodMap());
  Result<WeightStore> store = WeightStore::open(dir);
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_EQ(store->path(), path(indexName));
  EXPECT_EQ(store->tensors().size(), 3u);
}

TEST_F(ShardedTest, IndexNotJson) {
  const std::string index = writeFile(indexName, R"({"weight_map": )");
  expectOpenError(index, index, "not valid JSON: parse error");
}

TEST_F(ShardedTest, IndexNotObject) {
  const std::string index = writeFile(indexName, "[]");
  expectOpenError(index, index, "index is [], not a JSON object");
}

TEST_F(ShardedTest, MissingWeightMap) {
  const std::string index = writeFile(indexName, R"({"metadata": {}})");
  expectOpenError(index, index, "missing 'weight_map'");
}

TEST_F(ShardedTest, WeightMapNotObject) {
  const std::string index = writeIndex(R"(["embed"])");
  expectOpenError(index, index, "weight_map is [\"embed\"], not an object");
}

TEST_F(ShardedTest, WeightMapEmpty) {
  const std::string index = writeIndex("{}");
  expectOpenError(index, index, "weight_map is empty");
}

TEST_F(ShardedTest, WeightMapValueNotString) {
  const std::string index = writeIndex(R"({"embed": 1})");
  expectOpenError(index, index, "weight_map['embed'] is 1, not a string");
}

TEST_F(ShardedTest, ShardMissing) {
  const std::string index =
      writeIndex(R"({"embed": "model-00009-of-00009.safetensors"})");
  expectOpenError(index, index,
                  "weight_map['embed']: shard "
                  "'model-00009-of-00009.safetensors' does not exist");
}

TEST_F(ShardedTest, TensorMissingFromItsShard) {
  const std::string index = writeIndex(
      R"({"embed": ")" + shard1 + R"(", "norm": ")" + shard1 +
      R"(", "head": ")" + shard2 + R"(", "lost": ")" + shard2 + R"("})");
  expectOpenError(index, index,
                  "tensor 'lost' is mapped to shard '" + shard2 +
                      "', which does not contain it");
}

TEST_F(ShardedTest, ShardTensorNotInIndex) {
  const std::string index = writeIndex(R"({"embed": ")" + shard1 +
                                       R"(", "head": ")" + shard2 + R"("})");
  expectOpenError(index, index,
                  "shard '" + shard1 +
                      "' holds tensor 'norm', which the index does not list");
}

TEST_F(ShardedTest, ShardTensorMappedElsewhere) {
  ASSERT_TRUE(writeSafetensors(
      path(shard2), {HostTensor::fromDouble("head", DType::F16, {3}, {7, 8, 9}),
                     HostTensor::fromDouble("norm", DType::F32, {2}, {5, 6})}));
  const std::string index = writeIndex(goodMap());
  expectOpenError(index, index,
                  "shard '" + shard2 +
                      "' holds tensor 'norm', which the index maps to shard '" +
                      shard1 + "'");
}

TEST_F(ShardedTest, CorruptShardIsNamed) {
  const std::string shard = writeFile(shard2, "\x01\x02");
  expectOpenError(writeIndex(goodMap()), shard, "file is 2 bytes");
}

using DirectoryTest = TempDirTest;

TEST_F(DirectoryTest, ResolvesModelSafetensors) {
  ASSERT_TRUE(
      writeSafetensors(path("model.safetensors"),
                       {HostTensor::fromDouble("w", DType::F32, {1}, {42})}));
  // A single file wins over an index, as in transformers.
  writeFile("model.safetensors.index.json", "not even JSON");
  Result<WeightStore> store = WeightStore::open(dir);
  ASSERT_TRUE(store) << store.error().message;
  EXPECT_EQ(store->path(), path("model.safetensors"));
  Result<HostTensor> w = store->read("w");
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(w->toDouble(), std::vector<double>{42});
}

TEST_F(DirectoryTest, OpensSingleFileDirectly) {
  const std::string file = path("weights.safetensors");
  ASSERT_TRUE(writeSafetensors(
      file, {HostTensor::fromDouble("w", DType::I32, {2}, {-1, 7})}));
  Result<WeightStore> store = WeightStore::open(file);
  ASSERT_TRUE(store) << store.error().message;
  ASSERT_EQ(store->tensors().size(), 1u);
  EXPECT_EQ(store->tensors()[0].dtype, DType::I32);
  Result<HostTensor> w = store->read("w");
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(w->toDouble(), (std::vector<double>{-1, 7}));
}

TEST_F(DirectoryTest, EmptyDirectoryIsAnError) {
  writeFile("config.json", "{}");
  Result<WeightStore> store = WeightStore::open(dir);
  ASSERT_FALSE(store);
  EXPECT_TRUE(isErrorAbout(store.error().message, dir,
                           "neither model.safetensors nor "
                           "model.safetensors.index.json"));
}

TEST_F(DirectoryTest, MissingPathIsAnError) {
  const std::string missing = path("nowhere");
  Result<WeightStore> store = WeightStore::open(missing);
  ASSERT_FALSE(store);
  EXPECT_TRUE(isErrorAbout(store.error().message, missing, "No such file"));
}

//===----------------------------------------------------------------------===//
// Atomic writes
//===----------------------------------------------------------------------===//

using AtomicWriteTest = TempDirTest;

TEST_F(AtomicWriteTest, CreatesAndReplacesWithoutTempFiles) {
  const std::string file = path("config.json");
  ASSERT_TRUE(writeFileAtomic(file, "first"));
  EXPECT_EQ(readFile(file), "first");
  ASSERT_TRUE(writeFileAtomic(file, "second, longer"));
  EXPECT_EQ(readFile(file), "second, longer");
  ASSERT_TRUE(writeFileAtomic(file, ""));
  EXPECT_EQ(readFile(file), "");
  EXPECT_EQ(listDir(), std::vector<std::string>{"config.json"});
}

TEST_F(AtomicWriteTest, MissingDirectoryFails) {
  const std::string file = path("no/such/dir/config.json");
  Status status = writeFileAtomic(file, "x");
  ASSERT_FALSE(status);
  EXPECT_TRUE(
      isErrorAbout(status.error().message, file, "cannot create temporary"));
  EXPECT_TRUE(listDir().empty());
}

TEST_F(AtomicWriteTest, TargetThatIsADirectoryIsKept) {
  const std::string target = path("model.safetensors");
  std::filesystem::create_directory(target);
  writeFile("model.safetensors/keep", "kept");
  Status status = writeSafetensors(
      target, {HostTensor::fromDouble("w", DType::F32, {1}, {1})});
  ASSERT_FALSE(status);
  EXPECT_TRUE(isErrorAbout(status.error().message, target, "cannot rename"));
  EXPECT_TRUE(std::filesystem::is_directory(target));
  EXPECT_EQ(readFile(path("model.safetensors/keep")), "kept");
  EXPECT_EQ(listDir(), std::vector<std::string>{"model.safetensors"});
}

TEST_F(AtomicWriteTest, FailedWriteKeepsOldFile) {
  const std::string file = path("model.safetensors");
  ASSERT_TRUE(writeSafetensors(
      file, {HostTensor::fromDouble("w", DType::F32, {1}, {1})}));
  const std::string before = readFile(file);

  // Make the write fail midway: cap the size of files this process writes.
  rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  auto savedHandler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit capped = saved;
  capped.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &capped), 0);
  Status status = writeSafetensors(
      file, {HostTensor::fromDouble("w", DType::F32, {1 << 16},
                                    std::vector<double>(1 << 16, 2.0))});
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, savedHandler);

  ASSERT_FALSE(status);
  EXPECT_TRUE(
      isErrorAbout(status.error().message, file, "cannot write temporary"));
  EXPECT_EQ(readFile(file), before);
  EXPECT_EQ(listDir(), std::vector<std::string>{"model.safetensors"});
}

} // namespace
