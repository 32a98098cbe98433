// A tiny check helper for mybag's C++ tests (no test framework): each CHECK counts, prints the
// failure with its file, line and the current scope, and makes the program exit non-zero.
//
//   EXPECT(cond)                         a boolean
//   EXPECT_EQ(a, b)                      two printable values, ==
//   EXPECT_CLOSE(actual, expected)       tensors: same shape, dtype and layout, and close with
//   EXPECT_CLOSE_TOL(a, e, rtol, atol)   the dtype's tolerance (or the given one), NaNs equal
//   EXPECT_EQUAL(actual, expected)       tensors: bit-for-bit equal (torch::equal) after the above
//   EXPECT_THROWS(Type, statement, "substring", ...)
//                                       the statement throws exactly a Type (a c10::Error
//                                       subclass, or c10::Error: any of them) whose message
//                                       contains each substring
//   SCOPE(description)                  labels the checks of the enclosing block
//   RUN(function)                       runs a test function, catching anything it throws
//   return check::report("name");       prints the totals; 0 when every check passed
#pragma once

#include <torch/torch.h>

#include <cstdlib>
#include <exception>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <sstream>
#include <string>
#include <typeinfo>
#include <vector>

namespace check {

inline int checks = 0;
inline int failures = 0;
inline std::vector<std::string> scopes;

inline std::string where() {
  std::string out;
  for (const auto& s : scopes) out += (out.empty() ? "" : " / ") + s;
  return out.empty() ? "(top level)" : out;
}

inline bool record(bool ok, const char* file, int line, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::cerr << "FAILED " << file << ":" << line << " [" << where() << "]\n  " << what << "\n";
  }
  return ok;
}

struct Scope {
  explicit Scope(std::string s) { scopes.push_back(std::move(s)); }
  ~Scope() { scopes.pop_back(); }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;
};

template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

inline std::string describe(const torch::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::ostringstream out;
  out << t.scalar_type() << t.sizes() << (t.is_sparse() ? " sparse" : "");
  return out.str();
}

// Default tolerances: tight, but allowing a different order of float additions.
inline std::pair<double, double> tolerance(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kDouble: return {1e-12, 1e-12};
    case torch::kFloat: return {1e-5, 1e-6};
    default: return {1e-2, 1e-3};  // half, bfloat16
  }
}

// Empty when close; else why not.
inline std::string mismatch(const torch::Tensor& actual, const torch::Tensor& expected,
                            double rtol, double atol, bool exact) {
  if (!actual.defined() || !expected.defined()) {
    if (actual.defined() == expected.defined()) return "";
    return str("actual is ", describe(actual), ", expected is ", describe(expected));
  }
  if (actual.is_sparse() != expected.is_sparse() || actual.sizes() != expected.sizes() ||
      actual.scalar_type() != expected.scalar_type() || actual.device() != expected.device()) {
    return str("actual is ", describe(actual), ", expected is ", describe(expected));
  }
  torch::NoGradGuard no_grad;
  const auto a = actual.is_sparse() ? actual.to_dense() : actual.detach();
  const auto e = expected.is_sparse() ? expected.to_dense() : expected.detach();
  const bool ok = exact ? torch::equal(a, e)
                        : (a.numel() == 0 || torch::allclose(a, e, rtol, atol, /*equal_nan=*/true));
  if (ok) return "";
  std::ostringstream out;
  if (a.is_floating_point()) {
    const auto diff = (a.to(torch::kDouble) - e.to(torch::kDouble)).abs();
    out << "max |actual - expected| = " << diff.nan_to_num(0).max().item<double>()
        << (exact ? " (bitwise equality required)" : str(" (rtol ", rtol, ", atol ", atol, ")"));
  } else {
    out << "integer tensors differ";
  }
  if (a.numel() <= 64) out << "\n  actual:\n" << a << "\n  expected:\n" << e;
  return out.str();
}

inline bool close(const torch::Tensor& actual, const torch::Tensor& expected, const char* file,
                  int line, const char* text, double rtol = -1, double atol = -1,
                  bool exact = false) {
  if (rtol < 0 && expected.defined()) std::tie(rtol, atol) = tolerance(expected.scalar_type());
  const auto why = mismatch(actual, expected, rtol, atol, exact);
  return record(why.empty(), file, line, str(text, ": ", why));
}

inline bool contains_all(const std::string& message, std::initializer_list<const char*> parts,
                         std::string* missing) {
  for (const char* part : parts) {
    if (message.find(part) == std::string::npos) {
      *missing = part;
      return false;
    }
  }
  return true;
}

template <typename Expected>
bool throws(const std::function<void()>& statement, const char* file, int line,
            const char* text, const char* type_name,
            std::initializer_list<const char*> message_parts = {}) {
  try {
    statement();
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    if (dynamic_cast<const Expected*>(&e) == nullptr) {
      return record(false, file, line,
                    str(text, ": threw ", typeid(e).name(), " instead of ", type_name, ": ",
                        message));
    }
    std::string missing;
    if (!contains_all(message, message_parts, &missing)) {
      return record(false, file, line,
                    str(text, ": the message lacks \"", missing, "\": ", message));
    }
    return record(true, file, line, "");
  } catch (const std::exception& e) {
    return record(false, file, line,
                  str(text, ": threw a non-c10 exception (", typeid(e).name(), "): ", e.what()));
  }
  return record(false, file, line, str(text, ": did not throw (expected ", type_name, ")"));
}

inline bool throws_any(const std::function<void()>& statement, const char* file, int line,
                       const char* text, std::initializer_list<const char*> message_parts = {}) {
  try {
    statement();
  } catch (const std::exception& e) {
    const std::string message =
        dynamic_cast<const c10::Error*>(&e) ? static_cast<const c10::Error&>(e)
                                                   .what_without_backtrace()
                                             : e.what();
    std::string missing;
    if (!contains_all(message, message_parts, &missing)) {
      return record(false, file, line,
                    str(text, ": the message lacks \"", missing, "\": ", message));
    }
    return record(true, file, line, "");
  }
  return record(false, file, line, str(text, ": did not throw"));
}

inline void run(const char* name, const std::function<void()>& test) {
  Scope scope(name);
  const int before = failures;
  try {
    test();
  } catch (const c10::Error& e) {
    record(false, __FILE__, __LINE__, str("unexpected exception: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    record(false, __FILE__, __LINE__, str("unexpected exception: ", e.what()));
  }
  std::cout << (failures == before ? "ok    " : "FAIL  ") << name << "\n";
}

inline int report(const char* program) {
  std::cout << program << ": " << checks << " checks, " << failures << " failed\n";
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

}  // namespace check

#define EXPECT_CAT2(a, b) a##b
#define EXPECT_CAT(a, b) EXPECT_CAT2(a, b)
#define SCOPE(...) ::check::Scope EXPECT_CAT(check_scope_, __LINE__)(::check::str(__VA_ARGS__))
#define EXPECT(cond) ::check::record(static_cast<bool>(cond), __FILE__, __LINE__, #cond)
#define EXPECT_EQ(a, b)                                                                \
  [&](const auto& check_a, const auto& check_b) {                                      \
    return ::check::record(check_a == check_b, __FILE__, __LINE__,                     \
                           ::check::str(#a " == " #b ": ", check_a, " vs ", check_b)); \
  }((a), (b))
#define EXPECT_CLOSE(actual, expected) \
  ::check::close((actual), (expected), __FILE__, __LINE__, #actual " ~ " #expected)
#define EXPECT_CLOSE_TOL(actual, expected, rtol, atol) \
  ::check::close((actual), (expected), __FILE__, __LINE__, #actual " ~ " #expected, rtol, atol)
#define EXPECT_EQUAL(actual, expected) \
  ::check::close((actual), (expected), __FILE__, __LINE__, #actual " == " #expected, 0, 0, true)
#define EXPECT_THROWS(Type, statement, ...)                                                \
  ::check::throws<Type>([&] { (void)(statement); }, __FILE__, __LINE__, #statement, #Type, \
                        {__VA_ARGS__})
#define EXPECT_THROWS_ANY(statement, ...) \
  ::check::throws_any([&] { (void)(statement); }, __FILE__, __LINE__, #statement, {__VA_ARGS__})
#define RUN(test) ::check::run(#test, test)
